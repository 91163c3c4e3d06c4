"""Spatio-temporal diffusion transformer over latent video frames, with frame-level action control.

The architecture follows the WMPO world model (an STDiT3 without text cross-attention):
alternating spatial blocks (attention among the patches of one frame) and temporal blocks
(attention among the frames at one patch position). Each frame has its own conditioning vector

    c_f = TimestepEmbedding(t_f) + (ActionMLP(a_f) if frame f is predicted else no_action)

which drives the AdaLN-Zero shift/scale/gate of that frame in every spatial block, every temporal
block and the final AdaLN, as the timestep embedding does in STDiT3. The temporal blocks need it
most: a predicted frame's content follows from the context *and the actions of the frames before
it*, and it is in the temporal attention that a frame sees those other frames. (Without it, the
action could only act through the spatial blocks of its own frame, and the model learned to follow
its actions several times more slowly.) Context frames carry a small noise timestep (noisy-frame
conditioning) and a learned "no action" embedding.

Building blocks are diffusers' own (`PatchEmbed`, `Timesteps`, `TimestepEmbedding`,
`AdaLayerNormContinuous`, `Attention`, `FeedForward`); the adaLN-Zero modulation is written here
because diffusers' `AdaLayerNormZero` takes one conditioning vector per sequence, and a temporal
sequence (the frames at one patch position) needs one per token.
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
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn


class ModulatedBlock(nn.Module):
    """Self-attention + MLP with adaLN-Zero modulation (DiT), conditioned per frame.

    Serves as the spatial block (sequences = the patches of one frame) and as the temporal block
    (sequences = the frames at one patch position), like STDiT3's one block class for both.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qk_norm: str | None):
        super().__init__()
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(
            query_dim=dim, heads=num_heads, dim_head=dim // num_heads, bias=True, qk_norm=qk_norm, eps=1e-6
        )
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, inner_dim=int(dim * mlp_ratio), activation_fn="gelu-approximate")
        nn.init.zeros_(self.modulation[1].weight)  # adaLN-Zero: the block starts as the identity
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (B, A, L, D), B·A sequences of L tokens, attention along L; cond: (B, A or 1, L or 1, D).

        The modulation is computed once per frame and broadcast over the frame's tokens."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(cond).chunk(
            6, dim=-1
        )
        b, a, length, dim = x.shape
        h = self.norm1(x) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn(h.reshape(b * a, length, dim)).reshape(b, a, length, dim)
        h = self.norm2(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ff(h)


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
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=hidden_size,
            pos_embed_type="sincos",
        )
        self.time_proj = Timesteps(timestep_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(timestep_channels, hidden_size)
        self.action_embed = nn.Sequential(
            nn.Linear(action_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.no_action_embedding = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.spatial_blocks = nn.ModuleList(
            ModulatedBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth)
        )
        self.temporal_blocks = nn.ModuleList(
            ModulatedBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth)
        )
        self.norm_out = AdaLayerNormContinuous(hidden_size, hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self.gradient_checkpointing = False
        self._zero_init()

    def _zero_init(self) -> None:
        """adaLN-Zero (DiT): every block starts as the identity (its gates are zero, see
        `ModulatedBlock`) and the output starts at zero."""
        nn.init.zeros_(self.norm_out.linear.weight)
        nn.init.zeros_(self.norm_out.linear.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def frame_conditioning(
        self, timesteps: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) timesteps, (B, T, A) actions, (B, T) mask -> (B*T, hidden) per-frame conditioning."""
        t_emb = self.time_embed(self.time_proj(timesteps.reshape(-1)).to(self.dtype))
        a_emb = self.action_embed(actions.reshape(-1, actions.shape[-1]).to(self.dtype))
        a_emb = torch.where(action_mask.reshape(-1, 1), a_emb, self.no_action_embedding.expand_as(a_emb))
        return t_emb + a_emb

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor
    ) -> torch.Tensor:
        batch, frames, channels, height, width = latents.shape
        if (
            actions.shape[:2] != (batch, frames)
            or timesteps.shape != (batch, frames)
            or action_mask.shape != (batch, frames)
        ):
            raise ValueError(
                f"per-frame inputs must be (B={batch}, T={frames}, ...): timesteps {tuple(timesteps.shape)}, "
                f"actions {tuple(actions.shape)}, action_mask {tuple(action_mask.shape)}"
            )
        p = self.config.patch_size
        x = self.patch_embed(
            latents.reshape(batch * frames, channels, height, width).to(self.dtype)
        )  # (B*T, N, D)
        patches, dim = x.shape[1], x.shape[2]
        x = x.reshape(batch, frames, patches, dim)
        cond = self.frame_conditioning(timesteps, actions, action_mask).reshape(batch, frames, dim)
        frame_pos = get_1d_sincos_pos_embed_from_grid(
            dim, torch.arange(frames, device=x.device), output_type="pt"
        )
        for i, (spatial, temporal) in enumerate(zip(self.spatial_blocks, self.temporal_blocks, strict=True)):
            x = self._run(spatial, x, cond[:, :, None])  # (B, T, N, D): attention over the patches of a frame
            x = x.transpose(1, 2)  # (B, N, T, D): attention over the frames at a patch position
            if i == 0:
                x = x + frame_pos.to(x.dtype)
            x = self._run(temporal, x, cond[:, None]).transpose(1, 2)
        x = self.proj_out(
            self.norm_out(x.reshape(batch * frames, patches, dim), cond.reshape(batch * frames, dim))
        )
        h, w = height // p, width // p
        x = x.reshape(batch, frames, h, w, p, p, channels)
        return x.permute(0, 1, 6, 2, 4, 3, 5).reshape(batch, frames, channels, height, width)

    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)
