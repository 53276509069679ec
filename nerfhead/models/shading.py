"""The face field at inference: fewer, larger GEMMs and nothing that is not looked at.

:meth:`FaceField.forward` (training) concatenates ``[enc, audio_att(enc) * audio,
relu(expr_att(enc)) * expression]`` into the density MLP and ``[SH(d), geo, latent]`` into the
colour MLP, and runs the uncertainty MLP. At inference :class:`FusedShader` computes the
same function with the linear algebra rearranged:

* the three first layers that read the position encoding (audio attention, expression
  attention, the density MLP's columns for ``enc``) are **one GEMM** with the weights stacked;
* the density layer's columns for the attended audio and expression are scaled by the
  frame's audio and expression codes once per frame, so ``(w * a) @ W.T`` becomes
  ``w @ (W * a).T``, added to the first GEMM's density part by one ``addmm`` (the
  per-sample input of the density layer, ``enc`` plus the codes, is never concatenated);
* the colour layer's columns for the latent become a per-frame bias (its per-sample input
  is ``[SH(d), geo]`` only);
* the uncertainty head is not run (only the training loss reads it).

The sums are regrouped, so the result equals ``forward`` within float32 rounding
(``TOL_FUSED`` in tests/test_fast_render.py), not bit for bit. The stacked weights are
cached and rebuilt when a parameter changes (its ``_version`` counter moves with every
in-place optimiser step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from nerfhead.models.layers import sh_encode, trunc_exp

if TYPE_CHECKING:
    from nerfhead.models.field import Conditions, FaceField


def _first(mlp) -> Tensor:
    return mlp[0].weight


def _after_first(mlp, x: Tensor) -> Tensor:
    """The layers of ``mlp`` after its first linear layer, applied to that layer's output."""
    inplace = not torch.is_grad_enabled()  # with autograd on, x may be a split's view
    for layer in list(mlp)[1:]:
        if isinstance(layer, torch.nn.ReLU):
            x = torch.relu_(x) if inplace else torch.relu(x)
        else:
            x = layer(x)
    return x


def _stacked_first_layers(field: FaceField) -> dict:
    """The merged first-layer weights, cached on the field and keyed on parameter versions."""
    params = [_first(field.audio_att), _first(field.sigma_net), _first(field.color_net)]
    if field.expr_att is not None:
        params.append(_first(field.expr_att))
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = getattr(field, "_fused_cache", None)
    if cache is not None and cache["key"] == key:
        return cache
    E, A, D = field.enc_dim, field.cfg.audio_dim, field.num_expression
    ws = _first(field.sigma_net).detach()
    heads = [_first(field.audio_att).detach()]
    if field.expr_att is not None:
        heads.append(_first(field.expr_att).detach())
    heads.append(ws[:, :E])
    cache = {"key": key,
             "first": torch.cat(heads, 0).contiguous(),          # [Ha (+ He) + Hs, E]
             "split": [h.shape[0] for h in heads],
             "first_t": torch.cat(heads, 0).T.contiguous(),        # [E, Ha (+ He) + Hs]
             "sigma_audio": ws[:, E:E + A].contiguous(),          # [Hs, A]
             "sigma_expr": ws[:, E + A:E + A + D].contiguous()}   # [Hs, D]
    field._fused_cache = cache
    return cache


class FusedShader:
    """``shader(x, d) -> (sigma [S] float32, rgb [S, 3])`` for one frame's conditions."""

    def __init__(self, field: FaceField, cond: Conditions):
        self.field = field
        w = _stacked_first_layers(field)
        self.first_t, self.split = w["first_t"], w["split"]
        # per-frame folding: (att * code) @ W.T == att @ (W * code).T
        self.sigma_audio = (w["sigma_audio"] * cond.audio.detach()[None, :]).T.contiguous()
        self.sigma_expr = (w["sigma_expr"] * cond.expression.detach()[None, :]).T.contiguous() \
            if field.expr_att is not None else None
        wc = _first(field.color_net).detach()
        n_sh = field.cfg.sh_degree ** 2
        geo = field.cfg.geo_feat_dim
        self.color_sh = wc[:, :n_sh].T.contiguous()
        self.color_geo = wc[:, n_sh:n_sh + geo].T.contiguous()
        lat = wc[:, n_sh + geo:]
        self.color_bias = (lat @ cond.latent.detach()) if field.cfg.latent_dim else \
            torch.zeros(wc.shape[0], device=wc.device, dtype=wc.dtype)
        # [A (+ D), Hs]: the attended audio and expression columns of the density layer
        self.sigma_att = torch.cat([self.sigma_audio] + ([self.sigma_expr] if self.sigma_expr is not None
                                                         else []), 0)
        self.color_in = torch.cat([self.color_sh, self.color_geo], 0)  # [SH + geo, Hc]

    def __call__(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        f = self.field
        h = f.encode_position(x) @ self.first_t  # the three heads' first layers: one GEMM
        parts = list(h.split(self.split, -1))
        att = [_after_first(f.audio_att, parts[0])]  # ReLU + the attention's output layer
        if self.sigma_expr is not None:
            att.append(torch.relu(_after_first(f.expr_att, parts[1])))
        att = torch.cat(att, -1)
        pre = torch.addmm(parts[-1], att, self.sigma_att.to(att.dtype))
        out = _after_first(f.sigma_net, pre)
        # float32 before exp: float16 overflows above exp(11)
        sigma = trunc_exp(out[:, 0].float().clamp(max=15.0))
        geo = out[:, 1:]
        cin = torch.cat([sh_encode(d, f.cfg.sh_degree).to(geo.dtype), geo], -1)
        c = torch.addmm(self.color_bias.to(cin.dtype), cin, self.color_in.to(cin.dtype))
        rgb = torch.sigmoid(_after_first(f.color_net, c))
        return sigma, rgb
