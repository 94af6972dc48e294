"""Real Inception features for FID/KID, only from a weights file the user already has: never downloaded.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-ported InceptionV3 that
Inception FID is defined on; torchmetrics' FID/KID use the same one), fed with torch-fidelity's
own weights file ``pt_inception-2015-12-05-6726825d.pth``. torch-fidelity would ``torch.load`` a
given path with code execution allowed, and download the file when given none, so the sandbox never
hands it the user's path: the file is read weights-only (:func:`sandbox.nn.weights.load_safely`),
checked to be a dict of tensors, and the network gets a copy re-saved from those tensors alone.
The features (2048-d pool3) go into the same :func:`~sandbox.metrics.generative.frechet_distance`
and :func:`~sandbox.metrics.generative.kid` as the sandbox's own features.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from sandbox.errors import SandboxError
from sandbox.nn.weights import load_safely

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def load_inception(path: str | Path) -> nn.Module:
    """torch-fidelity's InceptionV3 (pool3 features) with the weights in ``path``; every way this can fail
    (no torch-fidelity, no file, not a torch file, a file needing code, other weights) is one
    :class:`SandboxError` line, and nothing is ever downloaded."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SandboxError(f"--inception-weights {str(path)!r}: no such file (expected torch-fidelity's "
                           f"{INCEPTION_FILE}; the sandbox never downloads it)")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise SandboxError("--inception-weights needs torch-fidelity, which is not installed "
                           "(pip install torch-fidelity, or pip install -e '.[inception]')") from None
    state = load_safely(path)
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and torch.is_tensor(v)
                                                      for k, v in state.items())):
        raise SandboxError(f"--inception-weights {str(path)!r} holds {type(state).__name__}, not a dict of "
                           f"tensors: not torch-fidelity's {INCEPTION_FILE}")
    with tempfile.TemporaryDirectory() as tmp:
        clean = Path(tmp) / INCEPTION_FILE
        torch.save(dict(state), clean)  # tensors only: what torch-fidelity's full torch.load reads is ours
        try:
            net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(clean))
        except RuntimeError as exc:  # load_state_dict: missing / unexpected keys, wrong shapes
            raise SandboxError(f"--inception-weights {str(path)!r} does not hold torch-fidelity's InceptionV3 "
                               f"weights ({' '.join(str(exc).split())[:160]})") from None
    return net.eval()


@torch.no_grad()
def inception_features(net: nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``(N, C, H, W) in [0, 1] -> (N, 2048)`` float32 pool3 features on the network's device (greyscale
    repeated to RGB; quantised to uint8 as the network expects, like saved images)."""
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].float()
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8).to(device)
        out.append(net(x)[0].float().cpu())
    return torch.cat(out)
