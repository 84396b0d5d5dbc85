"""Models users bring: any torchvision classification CNN, named `torchvision.<name>`.

The model is torchvision's own module (its module names stay torchvision's: `layer1.0.conv1`,
`features.3.block.0.0`, ...) built with the data set's class count; it takes the data set's input
size (a 32x32 CIFAR image through an ImageNet stem: torchvision's adaptive pooling makes that work
for most models, and `check_input_size` says so when it does not). Weights are random, or
torchvision's pretrained ones (`--tv_weights DEFAULT`) read from the torch hub cache: every tensor
whose name and shape match is copied, so the classifier head keeps its fresh initialisation when the
class count differs from ImageNet's 1000.

Vision transformers (vit_, swin_, maxvit_) are left out: this project prunes and regrows CNN filters.
torchvision is imported on use: `import torchvision.models` costs ~0.5 s per process, and the
project's own zoo does not need it.
"""
import difflib
import os

import torch

from utils.errors import BridgeError, UnknownChoiceError

PREFIX = "torchvision."
_NOT_CNNS = ("vit_", "swin_", "maxvit_")
# constructor arguments that make a model return plain logits in training mode too (no auxiliary heads)
_EXTRA_ARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
               "inception_v3": {"aux_logits": False, "init_weights": True}}


def is_torchvision_name(name):
    return isinstance(name, str) and name.startswith(PREFIX)


def is_vision_transformer(name):
    return is_torchvision_name(name) and name.removeprefix(PREFIX).startswith(_NOT_CNNS)


def torchvision_names():
    """Every torchvision classification CNN, as `torchvision.<name>`."""
    import torchvision.models as tvm

    return tuple(PREFIX + n for n in tvm.list_models(module=tvm) if not n.startswith(_NOT_CNNS))


def close_matches(name, candidates, n=5):
    """The candidates nearest to `name` (the part after `torchvision.` is compared as well)."""
    bare = {c.removeprefix(PREFIX): c for c in candidates}
    hits = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    hits += [bare[h] for h in difflib.get_close_matches(name.removeprefix(PREFIX), list(bare), n=n, cutoff=0.6)]
    return list(dict.fromkeys(hits))[:n]


def build_torchvision(name, num_classes, weights=None, download=True):
    """torchvision's `<name>` (without the prefix) for `num_classes` classes; `weights`: None, "DEFAULT" or a
    weights enum member name (e.g. "IMAGENET1K_V1"), copied in where names and shapes match."""
    import torchvision.models as tvm

    base = name.removeprefix(PREFIX)
    model = tvm.get_model(base, num_classes=num_classes, **_EXTRA_ARGS.get(base, {}))
    if weights is not None:
        pretrained = _pretrained(tvm, base, weights, download).state_dict()
        own = model.state_dict()
        copied = {k: v for k, v in pretrained.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(copied, strict=False)
        fresh = sorted(k for k in own if k not in copied)
        from utils.progress import log

        log(f"{name}: {weights} weights copied into {len(copied)} of {len(own)} tensors"
            + (f"; freshly initialised: {', '.join(fresh)}" if fresh else ""))
    return model


def _pretrained(tvm, base, weights, download):
    enum = tvm.get_model_weights(base)
    members = ["DEFAULT", *enum.__members__]
    if weights not in members:
        raise UnknownChoiceError(f"--tv_weights for {PREFIX}{base}", weights, members)
    chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    file = os.path.basename(chosen.url)
    if not os.path.isfile(os.path.join(folder, file)) and not download:
        raise BridgeError(f"torchvision weights {chosen} are not in {folder}: download {chosen.url} there "
                          "(or allow downloads), or drop --tv_weights for random weights")
    try:
        return tvm.get_model(base, weights=chosen)
    except Exception as exc:  # offline: a URLError after the cache miss
        raise BridgeError(f"cannot load torchvision weights {chosen}: {file} is not in {folder} and the download "
                          f"failed ({type(exc).__name__}: {exc}); put {chosen.url} there, or drop --tv_weights") \
            from None


_CHECKED = set()


@torch.no_grad()
def check_input_size(model, name, input_size):
    """Fail with one line when `model` cannot take `input_size`-pixel images (checked once per process)."""
    if (name, input_size) in _CHECKED:
        return
    training = model.training
    try:
        model.eval()(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    except RuntimeError as exc:
        raise BridgeError(f"{name} cannot take {input_size}x{input_size} images ({str(exc).splitlines()[0]}); "
                          "pick a data set with larger images or another model") from None
    finally:
        model.train(training)
    _CHECKED.add((name, input_size))
