"""The wav2vec2-style CNN feature encoder, padding-exact and in exact chunks.

HF's feature encoder (Wav2Vec2, HuBERT, WavLM, Data2Vec-Audio) takes no mask. With
``feat_extract_norm="layer"`` every frame is normalised on its own, so a padded
utterance already gives its own frames. With ``"group"`` (wav2vec2-base, HuBERT-base)
the first conv layer's GroupNorm takes per-channel statistics over time, padding
included: `exact_feature_encoder` makes them each utterance's statistics over its
valid frames only. The same mechanism runs the CNN in chunks for long inputs: the
GroupNorm is applied with per-utterance statistics that come either from the whole
first-layer output (one piece) or, when chunking, from the first and second moments
of the conv's input windows (`first_layer_statistics`, float64, no whole-waveform
conv). Either way a padded utterance, whole or chunked, gives the frames it gives
alone. Data2Vec-Audio's stacked positional convolutions get their padding zeroed
before every layer, for the same reason.
"""

from contextlib import contextmanager, nullcontext
from contextvars import ContextVar

import torch
from tqdm import tqdm

from speechbrain_cald.masks import counts_to_mask

# Default CNN chunk: 3000 frames = 60 s at 16 kHz with the wav2vec2 stride of 320.
CHUNK_FRAMES = 3000


def feature_encoder_geometry(config):
    """(receptive field, total stride) of the CNN feature encoder, in samples."""
    field, stride = 1, 1
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


def _conv_frames(n_samples, kernel, step):
    """Output frames of a conv layer (no padding) over `n_samples` inputs (tensor)."""
    return torch.div(n_samples - kernel, step, rounding_mode="floor").clamp(min=-1) + 1


def cnn_frames(config, sample_lengths):
    """Frames the CNN feature encoder of a wav2vec2-style `config` gives for
    `sample_lengths` `(batch,)` samples (0 where too short), from its conv layers'
    kernels and strides (what HF's private `_get_feat_extract_output_lengths` computes,
    without the model). A config with an adapter (`add_adapter`) is refused."""
    if getattr(config, "add_adapter", False):
        raise ValueError(f"{config.model_type} with add_adapter=True is not supported")
    frames = sample_lengths
    for kernel, step in zip(config.conv_kernel, config.conv_stride):
        frames = _conv_frames(frames, kernel, step)
    return frames.clamp(min=0)


def first_layer_statistics(conv, wavs, n_valid, per_chunk):
    """Per (utterance, channel) mean and (biased) variance over the valid frames of
    the first conv layer `conv` (one input channel) on `wavs` `(batch, samples)`, as
    GroupNorm(channels, channels) computes them on an utterance alone, without running
    the conv: with x_t the `kernel` samples frame t reads, out_t = W x_t + b, so the
    mean is W m + b and the mean square diag(W R W^T) + 2 b (W m) + b^2, where m and R
    are the mean and the (kernel x kernel) second moment of the valid windows x_t
    (frames t < `n_valid`, `(batch,)`), summed in float64 over pieces of `per_chunk`
    frames. Returns two `(batch, channels, 1)` float64 tensors."""
    if conv.in_channels != 1 or conv.groups != 1:
        raise ValueError(f"expected a one-channel first conv layer, got {conv}")
    kernel, step = conv.kernel_size[0], conv.stride[0]
    windows = wavs.unfold(-1, kernel, step)  # (batch, frames, kernel), a view
    n_out = windows.shape[1]
    valid = counts_to_mask(n_valid, n_out).double().unsqueeze(-1)  # (batch, frames, 1)
    window_sum = wavs.new_zeros(wavs.shape[0], kernel, dtype=torch.float64)
    second = wavs.new_zeros(wavs.shape[0], kernel, kernel, dtype=torch.float64)
    for start in range(0, n_out, per_chunk):
        piece = windows[:, start : start + per_chunk].double() * valid[:, start : start + per_chunk]
        window_sum += piece.sum(1)
        second += piece.transpose(1, 2) @ piece
    count = n_valid.clamp(min=1).double()[:, None]
    weight = conv.weight.detach().double()[:, 0]  # (channels, kernel)
    bias = 0.0 if conv.bias is None else conv.bias.detach().double()
    projected = (window_sum / count) @ weight.T  # (batch, channels): W m
    mean = projected + bias
    mean_square = torch.einsum("ck,bkl,cl->bc", weight, second / count[..., None], weight)
    mean_square = mean_square + 2 * bias * projected + bias * bias
    var = (mean_square - mean.square()).clamp_min(0.0)
    return mean[..., None], var[..., None]


def _masked_group_norm(group_norm, h, n_valid):
    """GroupNorm(C, C) of h `(batch, C, time)` with each utterance's statistics over
    its first `n_valid` frames (differentiable, as GroupNorm on the valid part)."""
    valid = counts_to_mask(n_valid, h.shape[-1]).unsqueeze(1).to(h.dtype)  # (batch, 1, T)
    count = n_valid.clamp(min=1).to(h.dtype)[:, None, None]
    mean = (h * valid).sum(-1, keepdim=True) / count
    centred = h - mean
    var = (centred.square() * valid).sum(-1, keepdim=True) / count
    scale = torch.rsqrt(var + group_norm.eps) * group_norm.weight[:, None]
    return torch.addcmul(group_norm.bias[:, None], centred, scale)


@contextmanager
def _positional_convs_masked(model, sample_lengths):
    """Data2Vec-Audio stacks several positional convolutions: each reads the padding the
    previous one left non-zero (HF zeroes it before the first only). Zero it before
    every layer, as for an utterance alone."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(getattr(encoder, "pos_conv_embed", None), "layers", None)
    if layers is None or sample_lengths is None:
        yield
        return
    n_frames = cnn_frames(model.config, sample_lengths)

    def zero_padding(module, args):
        hidden = args[0]  # (batch, channels, frames)
        valid = counts_to_mask(n_frames.to(hidden.device), hidden.shape[-1]).unsqueeze(1)
        return (hidden * valid.to(hidden.dtype), *args[1:])

    handles = [layer.register_forward_pre_hook(zero_padding) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def exact_feature_encoder(model, sample_lengths=None, chunk_frames=None, progress=False):
    """Within the block, `model`'s front end (CNN feature encoder, positional
    convolutions) treats each utterance of a right-padded batch as if it were alone
    (`_exact_cnn`, `_positional_convs_masked`); see `_exact_cnn` for `chunk_frames`."""
    with _positional_convs_masked(model, sample_lengths):
        with _exact_cnn(model, sample_lengths, chunk_frames, progress):
            yield


@contextmanager
def shared_frozen_features():
    """Within the block, a frozen CNN feature encoder (no parameter needs a gradient)
    given the same input and lengths as an earlier frozen one with equal weights
    returns that one's output instead of running again. In a CALD step the student's
    CNN is the pretrained one, frozen, and so is the teacher's; both read the same
    batch, so the teacher's CNN pass is the student's. A CNN that trains, or whose
    weights differ in any element, runs as usual."""
    token = _SHARED_FEATURES.set([])
    try:
        yield
    finally:
        _SHARED_FEATURES.reset(token)


# (tensors the output depends on: weights, input, lengths; chunk_frames; output) of the
# frozen CNN passes run so far in the innermost `shared_frozen_features` block
_SHARED_FEATURES = ContextVar("shared_frozen_features", default=None)


def _equal_tensors(first, second):
    """Whether two lists of tensors are equal pairwise (shape, dtype, device, values)."""
    return len(first) == len(second) and all(
        a is b or (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device) and torch.equal(a, b)
        for a, b in zip(first, second)
    )


def _shared_forward(encoder, forward, sample_lengths, chunk_frames):
    """`forward` of `encoder` that reuses or records its output in the current
    `shared_frozen_features` block; None outside one, or when the encoder trains."""
    passes = _SHARED_FEATURES.get()
    if passes is None:
        return None
    params = list(encoder.parameters())
    if any(p.requires_grad for p in params):
        return None
    lengths = [] if sample_lengths is None else [sample_lengths]

    def shared(wavs):
        inputs = [*params, wavs, *lengths]
        for earlier_inputs, earlier_chunk, features in passes:
            if earlier_chunk == chunk_frames and _equal_tensors(earlier_inputs, inputs):
                return features
        features = forward(wavs)
        passes.append((inputs, chunk_frames, features.detach()))
        return features

    return shared


@contextmanager
def _output_replaced(module, compute, minimal_input):
    """Within the block, `module(x, ...)` returns `compute(x)`, through PyTorch hooks
    only (the HF instance and its `forward` stay as they are): a pre-hook computes the
    output and hands the module's own forward `minimal_input(x)` (a slice of a frame or two,
    so it costs nothing), whose result a forward hook replaces with the computed one."""
    computed = []  # a stack: nested calls of the same module pair up in order

    def before(mod, args):
        computed.append(compute(args[0]))
        return (minimal_input(args[0]), *args[1:])

    def after(mod, args, output):
        return computed.pop()

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _exact_cnn(model, sample_lengths=None, chunk_frames=None, progress=False):
    """Within the block, `model`'s CNN feature encoder treats each utterance of a
    right-padded batch as if it were alone: sample_lengths `(batch,)` holds the
    number of valid samples of each row (None: no padding). With `chunk_frames`, the
    CNN runs in chunks of that many output frames (with a tqdm bar over them if
    `progress`), so its memory stays that of one chunk whatever the length. Inside
    `shared_frozen_features`, a frozen CNN's output may be an equal CNN's.

    Chunk c covers output frames [c*n, (c+1)*n) and reads exactly their input
    samples: it starts at a multiple of the total stride and overlaps the next chunk
    by (receptive field - stride) samples, so no frame is dropped or recomputed and
    each equals the whole-waveform frame up to float rounding. The first layer's
    GroupNorm gets each utterance's statistics through hooks (`_output_replaced`).
    """
    config = model.config
    norm = getattr(config, "feat_extract_norm", "layer")  # Data2Vec-Audio: LayerNorm only
    if norm not in ("layer", "group"):
        raise ValueError(f"unknown feat_extract_norm {norm!r}")
    encoder = model.base_model.feature_extractor
    group_norm = encoder.conv_layers[0].layer_norm if norm == "group" else None
    if group_norm is not None and group_norm.num_groups != group_norm.num_channels:
        raise ValueError(f"expected one GroupNorm group per channel, got {group_norm}")
    field, stride = feature_encoder_geometry(config)
    conv = encoder.conv_layers[0].conv
    whole = encoder.forward  # HF's own forward, called directly: no hooks of ours

    def utterance_norm(wavs, n_valid, several):
        """h -> the first layer's GroupNorm of h with each utterance's statistics."""
        if not several:
            return lambda h: _masked_group_norm(group_norm, h, n_valid)
        per_chunk = chunk_frames * stride // conv.stride[0]
        mean, var = first_layer_statistics(conv, wavs, n_valid, per_chunk)
        weight, bias = group_norm.weight.double()[:, None], group_norm.bias.double()[:, None]
        scale = torch.rsqrt(var + group_norm.eps) * weight  # (batch, channels, 1)
        shift = (bias - mean * scale).to(group_norm.weight.dtype)
        scale = scale.to(group_norm.weight.dtype)
        return lambda h: torch.addcmul(shift, h, scale)

    def exact(wavs):
        lengths = sample_lengths
        if lengths is None:
            lengths = torch.full((wavs.shape[0],), wavs.shape[-1], device=wavs.device)
        n_valid = _conv_frames(lengths.to(wavs.device).long(), conv.kernel_size[0], conv.stride[0])
        n_frames = max((wavs.shape[-1] - field) // stride + 1, 1)
        starts = range(0, n_frames, chunk_frames or n_frames)
        several = len(starts) > 1
        normed = nullcontext()
        if group_norm is not None:
            norm_fn = utterance_norm(wavs, n_valid, several)
            normed = _output_replaced(group_norm, norm_fn, lambda h: h[..., :2])
        pieces = []
        with normed:
            for start in tqdm(starts, desc="CNN features", disable=not progress):
                end = min(start + (chunk_frames or n_frames), n_frames)
                piece = wavs[..., start * stride : (end - 1) * stride + field] if several else wavs
                pieces.append(whole(piece))
        return torch.cat(pieces, dim=-1) if several else pieces[0]

    plain = chunk_frames is None and (group_norm is None or sample_lengths is None)
    own = whole if plain else exact  # plain: nothing differs from HF's own forward
    forward = _shared_forward(encoder, own, sample_lengths, chunk_frames) or own
    if forward is whole:
        yield
        return
    with _output_replaced(encoder, forward, lambda wavs: wavs[..., :field]):
        yield
