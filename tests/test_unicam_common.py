"""Small models and an independent UniCAM oracle shared by the tests/test_unicam_*.py files.

The oracle is written from docs/method.md (sections 1 and 2) with explicit formulas (pairwise
differences, U-centring, projection off the Base, ``torch.autograd.grad`` and Grad-CAM
weighting); it does not use ``captum_unicam.stats``.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 4


class Block(nn.Module):
    """A ResNet basic block with a projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.conv2(h) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-like: 16x16 input -> layer1 (w, 8, 8) -> layer2 (w, 4, 4) -> logits."""

    def __init__(self, width: int = 16, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.layer1 = Block(8, width, 2)
        self.layer2 = Block(width, width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def layer1_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer2(self.layer1_out(x))).flatten(1))


class SmallVGG(nn.Module):
    """VGG-like: 16x16 input -> features[3] (a conv, 24 x 8 x 8, followed by an in-place ReLU)."""

    def __init__(self, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(12, 24, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TokenBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return t + self.mlp(t)


class TinyViT(nn.Module):
    """ViT-like: 16x16 input, 4x4 patches -> tokens (N, 1 + 16, dim) with a CLS token."""

    def __init__(self, dim: int = 16, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.block1 = TokenBlock(dim)
        self.block2 = TokenBlock(dim)
        self.head = nn.Linear(dim, classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.tokens(x)))[:, 0])


def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    """(N, 1 + h*w, C) tokens -> (N, C, h, w), dropping the CLS token."""
    n, length, c = t.shape
    side = int(round((length - 1) ** 0.5))
    return t[:, 1:].transpose(1, 2).reshape(n, c, side, side)


class TwoInputNet(nn.Module):
    """Takes (image, depth) plus additional args (scale per example, mode string)."""

    def __init__(self, c: int = 8, classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.rgb = nn.Conv2d(3, c, 3, padding=1)
        self.depth = nn.Conv2d(1, c, 3, padding=1)
        self.layer = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * c, classes)

    def fused(
        self, img: torch.Tensor, depth: torch.Tensor, scale: torch.Tensor, mode: str
    ) -> torch.Tensor:
        d = self.depth(depth) * scale.view(-1, 1, 1, 1)
        h = self.rgb(img) + d if mode == "sum" else self.rgb(img) - d
        return torch.relu(h)

    def forward(self, img, depth, scale, mode="sum"):
        h = torch.relu(self.layer(self.fused(img, depth, scale, mode)))
        return self.fc(h.mean((2, 3)))


def make(cls, seed: int, dtype=torch.float64, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(**kwargs).to(dtype).eval()
    # Non-trivial batch-norm statistics, so eval mode matters.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def batch(n: int = 12, seed: int = 0, dtype=torch.float64, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    y = torch.arange(n) % NUM_CLASSES
    return x, y


# ---------------------------------------------------------------------------
# Oracle (explicit formulas, no captum_unicam code)
# ---------------------------------------------------------------------------


def u_centred_distances(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1)
    n = x.shape[0]
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    eye = torch.eye(n, dtype=torch.bool)
    d = torch.where(eye, torch.zeros_like(sq), torch.where(eye, torch.ones_like(sq), sq).sqrt())
    u = (
        d
        - d.sum(1, keepdim=True) / (n - 2)
        - d.sum(0, keepdim=True) / (n - 2)
        + d.sum() / ((n - 1) * (n - 2))
    )
    return u.masked_fill(eye, 0.0)


def u_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n = a.shape[0]
    return (a * b).sum() / (n * (n - 3))


def pdcor_oracle(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(P x . P y) / sqrt((P x . P x)(P y . P y)), P = projection off z's U-centred matrix."""
    a, b, c = (u_centred_distances(t) for t in (x, y, z))

    def perp(m):
        return m - u_inner(m, c) / u_inner(c, c) * c

    pa, pb = perp(a), perp(b)
    return u_inner(pa, pb) / (u_inner(pa, pa) * u_inner(pb, pb)).sqrt()


def gradcam_oracle(a: torch.Tensor, g: torch.Tensor, relu: bool = True) -> torch.Tensor:
    m = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True)
    return torch.relu(m) if relu else m


def one_hot(y: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, NUM_CLASSES).to(dtype)


def unicam_oracle(a_s, a_b, labels, relu: bool = True, rep_s=None, rep_b=None):
    """Maps (distilled, residual) and scores from layer activations (leaves requiring grad).

    ``rep_s`` / ``rep_b``: callables from the activation to a deeper representation
    (default: the activation itself).
    """
    a_s = a_s.detach().requires_grad_()
    a_b = a_b.detach().requires_grad_()
    x_s = a_s if rep_s is None else rep_s(a_s)
    x_b = a_b if rep_b is None else rep_b(a_b)
    s_d = pdcor_oracle(x_s, labels, x_b.detach())
    s_r = pdcor_oracle(x_b, labels, x_s.detach())
    (g_s,) = torch.autograd.grad(s_d, a_s)
    (g_b,) = torch.autograd.grad(s_r, a_b)
    return (
        gradcam_oracle(a_s.detach(), g_s, relu),
        gradcam_oracle(a_b.detach(), g_b, relu),
        float(s_d.detach()),
        float(s_r.detach()),
    )


def all_hooks(*models: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for model in models
        for m in model.modules()
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    """Close relative to the largest magnitude of the expected map (maps are small numbers)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(expected.abs().max())
    assert scale > 0, "degenerate oracle: all-zero expected map"
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"max error {err:.3e} vs scale {scale:.3e}"
