"""Choosing the layers a hybrid student keeps as attention, by measurement.

`StudentConfig.keep_attention = {"count": k, "by": "ablation"}`: before training, the
attention output of each layer of the starting model is removed in turn (set to zero,
the rest of the model as it is) and the change of the model's last hidden state on a
few training batches is measured (layer-normed MSE over valid frames, as one L_LD
term); the k layers whose attention the model depends on most keep it. It needs no
student and no training (one forward pass per layer and batch), does not depend on
the mixer's initialisation, and touches no random state. The chosen indices replace
the rule in the run's StudentConfig: the student, its checkpoints and its export
record them.
"""

import itertools
import logging
from collections.abc import Mapping

import speechbrain as sb
import torch

from speechbrain_cald.conversion import detect_family
from speechbrain_cald.conversion.config import check_keep_count
from speechbrain_cald.losses import layerwise_distillation_loss

logger = logging.getLogger(__name__)
BATCHES = 4  # training batches the costs are measured on


def _zero_output(module, args, output):
    """Forward hook: the attention module's output (its first element) set to zero."""
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


@torch.no_grad()
def attention_costs(model, task, batches, heads=None):
    """[cost of removing layer i's attention output] for every layer of `model` (eval
    mode): the mean over `batches` of the layer-normed MSE between the last hidden
    state without that layer's attention and the model's own."""
    family = detect_family(model)
    model.eval()

    def last_states():
        outs = [task.forward(model, batch, sb.Stage.TEST, heads) for batch in batches]
        return [(o.hidden_states[-1], o.mask) for o in outs]

    reference = last_states()
    costs = []
    for layer in family.layers(model):
        hook = family.slot(layer).register_forward_hook(_zero_output)
        try:
            terms = [
                layerwise_distillation_loss([state], [ref], mask, layers=[0])
                for (state, mask), (ref, _) in zip(last_states(), reference)
            ]
        finally:
            hook.remove()
        costs.append(float(torch.stack(terms).mean()))
    return costs


def most_costly(costs, count):
    """The `count` layers with the highest costs, in layer order."""
    ranked = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    return sorted(ranked[:count])


def resolve_keep_attention(hparams, train_set):
    """Replace `keep_attention: {count, by: ablation}` in the run's StudentConfig (the one
    the guidance holds) by the layer indices measured on the first `BATCHES` batches
    of `train_set` (a list of PaddedBatch, or a dataset); anything else is left
    alone, as is a std run (no student). Returns the indices, or None."""
    config = hparams.get("student_config")
    keep = getattr(config, "keep_attention", None)
    if not isinstance(keep, Mapping) or keep.get("by") != "ablation":
        return None
    if hparams.get("mode") == "std":  # the transformer itself trains: no student
        return None
    batches = train_set
    if not isinstance(train_set, list):
        size = hparams.get("eval_batch_size") or hparams["batch_size"]
        loader = sb.dataio.dataloader.make_dataloader(train_set, batch_size=size)
        batches = list(itertools.islice(loader, BATCHES))
    task = hparams["task"]
    model, heads = task.load(hparams["pretrained_folder"])
    check_keep_count(keep["count"], len(detect_family(model).layers(model)))  # before measuring
    costs = attention_costs(model, task, batches, heads)
    config.keep_attention = most_costly(costs, keep["count"])
    logger.info(
        "keep_attention by ablation: cost of removing each layer's attention %s -> keep %s",
        [round(c, 4) for c in costs],
        config.keep_attention,
    )
    return config.keep_attention
