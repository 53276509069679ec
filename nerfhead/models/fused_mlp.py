"""tiny-cuda-nn's FullyFusedMLP for the face field's MLPs at inference (CUDA, optional).

tinycudann is not on PyPI (users build it from source), so this path runs only where it
imports; ``head_shader`` logs once which MLPs run and why. Our MLPs map onto FullyFusedMLP
exactly: no biases, ReLU between layers, no output activation, all hidden layers one width.
FullyFusedMLP stores each layer's weight row-major as ``[out, in]`` (torch's ``nn.Linear``
layout) with the input width padded to a multiple of 16 and the output layer's rows padded
to a multiple of 16; the padding gets zero weights, so whatever tcnn pads the input with
(it uses ones) contributes nothing. Weights are copied from the torch MLPs and re-copied
when a parameter changes (``_version``). Runs in float16 (tcnn's precision): the named
tolerance is the float16 one of the autocast path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nerfhead.models.layers import sh_encode, trunc_exp

if TYPE_CHECKING:
    from nerfhead.models.field import Conditions, FaceField

WIDTHS = (16, 32, 64, 128)
"""Hidden widths FullyFusedMLP supports."""


def _linears(mlp) -> list:
    return [m for m in mlp if isinstance(m, torch.nn.Linear)]


def mlp_unsupported(mlp) -> str:
    """Why ``mlp`` cannot run as a FullyFusedMLP ('' when it can)."""
    lin = _linears(mlp)
    if len(lin) < 2:
        return "a single-layer MLP has no hidden width"
    widths = {m.out_features for m in lin[:-1]}
    if len(widths) != 1 or next(iter(widths)) not in WIDTHS:
        return f"hidden widths {sorted(widths)} (FullyFusedMLP needs one of {WIDTHS})"
    return ""


def _pad16(n: int) -> int:
    return 16 * math.ceil(n / 16)


def tcnn_params(mlp) -> Tensor:
    """The flat FullyFusedMLP parameter vector of torch MLP ``mlp`` (layers in order, each
    ``[out, in]`` row-major, input width and output rows zero-padded to multiples of 16)."""
    lin = _linears(mlp)
    parts = []
    for i, m in enumerate(lin):
        w = m.weight.detach().float()
        out_p = _pad16(w.shape[0]) if i == len(lin) - 1 else w.shape[0]
        in_p = _pad16(w.shape[1]) if i == 0 else w.shape[1]
        pad = torch.zeros(out_p, in_p, device=w.device)
        pad[:w.shape[0], :w.shape[1]] = w
        parts.append(pad.reshape(-1))
    return torch.cat(parts)


def _network(tcnn, mlp):
    lin = _linears(mlp)
    cfg = {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
           "n_neurons": lin[0].out_features, "n_hidden_layers": len(lin) - 1}
    net = tcnn.Network(lin[0].in_features, lin[-1].out_features, cfg).to(lin[0].weight.device)
    flat = tcnn_params(mlp)
    if net.params.numel() != flat.numel():
        raise RuntimeError(f"tinycudann FullyFusedMLP has {net.params.numel()} parameters, the "
                           f"layout here gives {flat.numel()} (another tcnn version?)")
    with torch.no_grad():
        net.params.copy_(flat.to(net.params.dtype))
    return net


def tcnn_shader(field: FaceField, cond: Conditions):
    """(shader(x, d) -> (sigma, rgb), '') running the field's MLPs as FullyFusedMLPs, or
    (None, why not)."""
    from nerfhead.ops.backend import optional_backend_error

    why = optional_backend_error("tcnn")
    if why:
        return None, why
    mlps = {"audio_att": field.audio_att, "sigma_net": field.sigma_net, "color_net": field.color_net}
    if field.expr_att is not None:
        mlps["expr_att"] = field.expr_att
    for name, m in mlps.items():
        bad = mlp_unsupported(m)
        if bad:
            return None, f"{name}: {bad}"
    import tinycudann as tcnn

    key = tuple((p.data_ptr(), p._version) for m in mlps.values() for p in m.parameters())
    cache = getattr(field, "_tcnn_cache", None)
    if cache is None or cache[0] != key:
        cache = (key, {name: _network(tcnn, m) for name, m in mlps.items()})
        field._tcnn_cache = cache
    nets = cache[1]
    audio, expr = cond.audio.detach(), cond.expression.detach()
    latent = cond.latent.detach()

    def shader(x: Tensor, d: Tensor):
        enc = field.encode_position(x)
        n = enc.shape[0]
        parts = [enc, nets["audio_att"](enc).float() * audio.expand(n, -1)]
        if "expr_att" in nets:
            parts.append(torch.relu(nets["expr_att"](enc).float()) * expr.expand(n, -1))
        h = nets["sigma_net"](torch.cat(parts, -1)).float()
        sigma = trunc_exp(h[:, 0].clamp(max=15.0))
        cparts = [sh_encode(d, field.cfg.sh_degree), h[:, 1:]]
        if field.cfg.latent_dim:
            cparts.append(latent.expand(n, -1))
        rgb = torch.sigmoid(nets["color_net"](torch.cat(cparts, -1)).float())
        return sigma, rgb

    return shader, ""
