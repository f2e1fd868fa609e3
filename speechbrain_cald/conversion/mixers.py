"""The built-in student mixers (CALD_METHOD.md section 3), one `register_mixer` each.

| mixer     | lobe                   | causal | attention init          |
|-----------|------------------------|--------|-------------------------|
| bimamba2  | BiMamba2 (2 x Mamba2)  | no     | V -> x, K -> B, Q -> C, O -> out_proj |
| bimamba2_shared | SharedProjectionBiMamba2 (one in_proj / out_proj, 2 scans) | no | as bimamba2 |
| linformer | LinformerSelfAttention | no     | (its family keeps Q/K/V) |
| mamba     | MambaMixer (Mamba-1)   | yes    | -                       |
| mamba2    | Mamba2Mixer            | yes    | -                       |
"""

from speechbrain_cald.conversion.registry import MixerSpec, register_mixer
from speechbrain_cald.lobes.bimamba2 import (
    BiMamba2,
    SharedProjectionBiMamba2,
    init_bimamba2_from_attention,
    mamba2_config_for_attention_init,
)
from speechbrain_cald.lobes.linformer import (
    LinformerConfig,
    LinformerProjections,
    LinformerSelfAttention,
)
from speechbrain_cald.lobes.mamba import MambaConfig, MambaMixer
from speechbrain_cald.lobes.mamba2 import Mamba2Config, Mamba2Mixer


def _init_bimamba2(mixer, q, k, v, o, heads):
    init_bimamba2_from_attention(mixer, q, k, v, o, heads)
    if isinstance(mixer, SharedProjectionBiMamba2):
        return ["in_proj.weight", "out_proj.weight"]
    return [
        f"{direction}.{proj}.weight"
        for direction in ("forward_mixer", "backward_mixer")
        for proj in ("in_proj", "out_proj")
    ]


def _attention_config(sizes, heads, fields):
    return mamba2_config_for_attention_init(sizes["d_model"], heads, **fields)


for _name, _lobe in (("bimamba2", BiMamba2), ("bimamba2_shared", SharedProjectionBiMamba2)):
    register_mixer(
        MixerSpec(
            name=_name,
            config_class=Mamba2Config,
            build=lambda config, shared, lobe=_lobe: lobe(config),
            causal=False,
            attention_config=_attention_config,
            init_from_attention=_init_bimamba2,
            init_note="in_proj x/B/C rows <- V/K/Q and out_proj <- O (each direction's, or "
            "the shared pair); in_proj z/dt rows random; attention biases not copied",
        )
    )


def _linformer(config, shared):
    """One layer's Linformer; with sharing "layer" every layer gets the same E (= F)."""
    projections = None
    if config.sharing == "layer":
        projections = shared.setdefault("linformer_projections", LinformerProjections(config))
    return LinformerSelfAttention(config, projections=projections)


register_mixer(
    MixerSpec(
        name="linformer",
        config_class=LinformerConfig,
        build=_linformer,
        causal=False,
        sizes=lambda sizes: {
            "hidden_size": sizes["hidden_size"],
            "num_attention_heads": sizes["num_heads"],
        },
        defaults=lambda sizes: {
            "max_len": sizes["max_positions"],
            "attention_dropout": sizes["attention_dropout"],
        },
    )
)

register_mixer(
    MixerSpec(
        name="mamba",
        config_class=MambaConfig,
        build=lambda config, shared: MambaMixer(config),
        causal=True,
    )
)

register_mixer(
    MixerSpec(
        name="mamba2",
        config_class=Mamba2Config,
        build=lambda config, shared: Mamba2Mixer(config),
        causal=True,
    )
)
