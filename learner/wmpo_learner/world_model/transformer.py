"""Spatio-temporal diffusion transformer over latent video frames, with frame-level action control.

The architecture follows the WMPO world model (an STDiT3 without text cross-attention):
alternating spatial blocks (attention among the patches of one frame) and temporal blocks
(attention among the frames at one patch position). Each frame has its own conditioning vector

    c_f = TimestepEmbedding(t_f) + (ActionMLP(a_f) if frame f is predicted else no_action)

which drives the AdaLN-Zero shift/scale/gate of that frame in every spatial block and the final
AdaLN. Context frames carry a small noise timestep (noisy-frame conditioning) and a learned
"no action" embedding. Temporal blocks are plain pre-norm blocks whose output projections start
at zero, so a fresh model begins as a per-frame denoiser and learns motion from there.

Every building block is diffusers' own (`PatchEmbed`, `Timesteps`, `TimestepEmbedding`,
`AdaLayerNormZero`, `AdaLayerNormContinuous`, `Attention`, `FeedForward`); only the wiring is here.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import (
    PatchEmbed,
    TimestepEmbedding,
    Timesteps,
    get_1d_sincos_pos_embed_from_grid,
)
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn


class SpatialBlock(nn.Module):
    """Self-attention within a frame + MLP, both modulated (AdaLN-Zero) by that frame's conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: str | None):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.attn = Attention(query_dim=dim, heads=num_heads, dim_head=dim // num_heads, bias=True, qk_norm=qk_norm, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, inner_dim=int(dim * mlp_ratio), activation_fn="gelu-approximate")

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (frames, patches, dim); cond: (frames, dim)."""
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb=cond)
        x = x + gate_msa[:, None] * self.attn(h)
        h = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.ff(h)


class TemporalBlock(nn.Module):
    """Self-attention across frames at one patch position + MLP (pre-norm, zero-initialised outputs)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: str | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(query_dim=dim, heads=num_heads, dim_head=dim // num_heads, bias=True, qk_norm=qk_norm, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ff = FeedForward(dim, inner_dim=int(dim * mlp_ratio), activation_fn="gelu-approximate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (patch positions, frames, dim)."""
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class ActionConditionedVideoTransformer(ModelMixin, ConfigMixin):
    """Predicts the flow-matching velocity of every frame of a latent window.

    forward(latents (B, T, C, H, W), timesteps (B, T) in [0, 1000], actions (B, T, A) in [-1, 1],
    action_mask (B, T) bool: True where the frame is conditioned on its action) -> (B, T, C, H, W).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        sample_size: int = 16,
        action_dim: int = 7,
        patch_size: int = 2,
        hidden_size: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qk_norm: str | None = "rms_norm",
        timestep_channels: int = 256,
    ):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"latent size {sample_size} is not divisible by patch_size {patch_size}")
        self.patch_embed = PatchEmbed(
            height=sample_size, width=sample_size, patch_size=patch_size, in_channels=in_channels, embed_dim=hidden_size,
            pos_embed_type="sincos",
        )
        self.time_proj = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(timestep_channels, hidden_size)
        self.action_embed = nn.Sequential(nn.Linear(action_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.no_action_embedding = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.spatial_blocks = nn.ModuleList(SpatialBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.temporal_blocks = nn.ModuleList(TemporalBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self.gradient_checkpointing = False
        self._zero_init()

    def _zero_init(self) -> None:
        """adaLN-Zero (DiT): every residual branch and the output start at zero."""
        for block in self.spatial_blocks:
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        for block in self.temporal_blocks:
            nn.init.zeros_(block.attn.to_out[0].weight)
            nn.init.zeros_(block.attn.to_out[0].bias)
            nn.init.zeros_(block.ff.net[-1].weight)
            nn.init.zeros_(block.ff.net[-1].bias)
        nn.init.zeros_(self.norm_out.linear.weight)
        nn.init.zeros_(self.norm_out.linear.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def frame_conditioning(self, timesteps: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) timesteps, (B, T, A) actions, (B, T) mask -> (B*T, hidden) per-frame conditioning."""
        t_emb = self.time_embed(self.time_proj(timesteps.reshape(-1)).to(self.dtype))
        a_emb = self.action_embed(actions.reshape(-1, actions.shape[-1]).to(self.dtype))
        a_emb = torch.where(action_mask.reshape(-1, 1), a_emb, self.no_action_embedding.expand_as(a_emb))
        return t_emb + a_emb

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor
    ) -> torch.Tensor:
        batch, frames, channels, height, width = latents.shape
        if actions.shape[:2] != (batch, frames) or timesteps.shape != (batch, frames) or action_mask.shape != (batch, frames):
            raise ValueError(
                f"per-frame inputs must be (B={batch}, T={frames}, ...): timesteps {tuple(timesteps.shape)}, "
                f"actions {tuple(actions.shape)}, action_mask {tuple(action_mask.shape)}"
            )
        p = self.config.patch_size
        x = self.patch_embed(latents.reshape(batch * frames, channels, height, width).to(self.dtype))  # (B*T, N, D)
        patches, dim = x.shape[1], x.shape[2]
        cond = self.frame_conditioning(timesteps, actions, action_mask)
        frame_pos = get_1d_sincos_pos_embed_from_grid(dim, torch.arange(frames, device=x.device), output_type="pt")
        for i, (spatial, temporal) in enumerate(zip(self.spatial_blocks, self.temporal_blocks, strict=True)):
            x = self._run(spatial, x, cond)
            x = x.reshape(batch, frames, patches, dim).transpose(1, 2).reshape(batch * patches, frames, dim)
            if i == 0:
                x = x + frame_pos.to(x.dtype)
            x = self._run(temporal, x)
            x = x.reshape(batch, patches, frames, dim).transpose(1, 2).reshape(batch * frames, patches, dim)
        x = self.proj_out(self.norm_out(x, cond))  # (B*T, N, p*p*C)
        h, w = height // p, width // p
        x = x.reshape(batch, frames, h, w, p, p, channels)
        return x.permute(0, 1, 6, 2, 4, 3, 5).reshape(batch, frames, channels, height, width)

    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)
