"""The VLA: a `transformers` vision-language backbone plus a parallel discrete-action head.

Layout of one forward pass (OpenVLA-OFT style, all K*A action tokens in ONE pass):

    [prefix text] [image features per camera] [state token]? [instruction text, padded] [K*A action queries]

The image features come from the backbone's own vision encoder and connector and are spliced
in where `<image>` stands in the prompt template. The K*A action queries are learned embeddings
appended after the prompt; the language model's last hidden state at each query is read out by
a small MLP head into `num_bins` logits. The language model is causal, so query j also sees
queries < j, but those carry no sampled values: the K*A tokens are independent given the prompt,
which is what makes their log-probabilities exact and cheap (no autoregressive decoding).

The instruction part is padded to a fixed length, so encoded inputs from different calls can be
concatenated along the batch dimension, and padding never changes the result (pads are masked
and position ids skip them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from wmpo_core.image_ops import resize_frames
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.robot_config import RobotConfig
from wmpo_core.vla.action_tokens import ActionTokenizer
from wmpo_core.vla.config import IMAGE_PLACEHOLDER, BackboneConfig, VLAConfig, VLAConfigError

SUPPORTED_BACKBONES = ("idefics3", "smolvlm")
"""Model types whose base model exposes `vision_model`, `connector` and `text_model` (SmolVLM, Idefics3)."""

Frames = np.ndarray | torch.Tensor
EncodedInputs = dict[str, torch.Tensor]


def build_backbone(spec: BackboneConfig, tokenizer_corpus: Sequence[str]) -> tuple[nn.Module, Any]:
    """A fresh backbone and its tokenizer: pretrained (hub id / local dir) or from a config."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if spec.kind == "pretrained":
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec.name_or_path)
            backbone = AutoModel.from_pretrained(spec.name_or_path)
        except OSError as exc:
            raise VLAConfigError(
                f"cannot load pretrained backbone '{spec.name_or_path}' ({exc}). Offline? Download it once "
                "with "
                "`hf download <id>` or point backbone.name_or_path at a local directory."
            ) from None
        return backbone, tokenizer
    from wmpo_core.vla.text_tokenizer import build_byte_bpe_tokenizer

    tokenizer = build_byte_bpe_tokenizer(tokenizer_corpus, spec.tokenizer_vocab_size)
    data = dict(spec.config or {})
    model_type = data.pop("model_type", None)
    if model_type not in SUPPORTED_BACKBONES:
        raise VLAConfigError(
            f"backbone.config.model_type must be one of {SUPPORTED_BACKBONES}, got {model_type!r}"
        )
    text = dict(data.pop("text_config", {}))
    text.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = AutoConfig.for_model(
        model_type,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        pad_token_id=tokenizer.pad_token_id,
        **data,
    )
    return AutoModel.from_config(config), tokenizer


class VLA(nn.Module):
    """Vision-language-action model with exact per-token action log-probabilities.

    The interface used by the policy, imagination and GRPO (all batched, on the model's device):
    `encode_inputs`, `action_logits`, `sample`, `log_probs`, `tokens_to_actions`,
    `actions_to_tokens`; attributes `chunk_size`, `action_dim`, `num_bins`, `image_size`.
    """

    def __init__(
        self,
        config: VLAConfig,
        backbone: nn.Module,
        tokenizer: Any,
        action_normalizer: ActionNormalizer,
        state_normalizer: ActionNormalizer | None = None,
    ):
        super().__init__()
        if config.cameras is None:
            raise VLAConfigError("VLA needs config.cameras resolved to camera names (use VLA.create)")
        model_type = getattr(backbone.config, "model_type", None)
        if model_type not in SUPPORTED_BACKBONES or not all(
            hasattr(backbone, a) for a in ("vision_model", "connector", "text_model")
        ):
            raise VLAConfigError(
                f"backbone of type {model_type!r} is not supported; supported: {SUPPORTED_BACKBONES} base "
                "models "
                "(load with AutoModel, not AutoModelForImageTextToText)"
            )
        vision_size = backbone.config.vision_config.image_size
        if vision_size != config.image_size:
            raise VLAConfigError(
                f"config.image_size is {config.image_size} but the backbone's vision encoder takes "
                f"{vision_size} px"
            )
        if config.use_state and state_normalizer is None:
            raise VLAConfigError("config.use_state needs state normalization statistics")
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.action_tokenizer = ActionTokenizer(action_normalizer, config.num_bins)
        self.state_normalizer = state_normalizer if config.use_state else None

        self.chunk_size = config.chunk_size
        self.action_dim = action_normalizer.dim
        self.num_bins = config.num_bins
        self.image_size = config.image_size
        self.cameras: tuple[str, ...] = tuple(config.cameras)
        self.version = "untrained"
        self.parent_version: str | None = None

        hidden = backbone.config.text_config.hidden_size
        head_hidden = config.head_hidden_size or hidden
        self.action_queries = nn.Parameter(torch.randn(self.chunk_size * self.action_dim, hidden) * 0.02)
        self.action_head = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.Linear(hidden, head_hidden),
            nn.GELU(),
            nn.Linear(head_hidden, self.num_bins),
        )
        self.state_proj = (
            nn.Linear(state_normalizer.dim, hidden) if self.state_normalizer is not None else None
        )

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise VLAConfigError("the tokenizer has neither a pad nor an eos token")
        self._pad_id = int(pad)
        prefix_text, self._suffix_template = config.prompt_template.split(IMAGE_PLACEHOLDER)
        prefix = tokenizer(prefix_text, add_special_tokens=False)["input_ids"] if prefix_text else []
        if tokenizer.bos_token_id is not None and (not prefix or prefix[0] != tokenizer.bos_token_id):
            prefix = [tokenizer.bos_token_id, *prefix]
        self.register_buffer("_prefix_ids", torch.tensor(prefix, dtype=torch.long), persistent=False)
        self.register_buffer(
            "_pixel_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("_pixel_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)
        self._suffix_cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        config: VLAConfig,
        robot_config: RobotConfig,
        action_normalizer: ActionNormalizer,
        state_normalizer: ActionNormalizer | None = None,
    ) -> VLA:
        """A new (untrained head) VLA for `robot_config`; cameras default to the robot's first."""
        config = dataclasses.replace(config, cameras=resolve_cameras(config, robot_config))
        if action_normalizer.dim != robot_config.action.dim:
            raise VLAConfigError(
                f"action statistics have {action_normalizer.dim} dims, robot '{robot_config.name}' has "
                f"{robot_config.action.dim}"
            )
        if config.use_state and (
            state_normalizer is None or state_normalizer.dim != len(robot_config.joints)
        ):
            raise VLAConfigError(
                f"use_state needs state statistics for the {len(robot_config.joints)} joints"
            )
        corpus = [config.prompt_template.replace(IMAGE_PLACEHOLDER, " "), *robot_config.tasks]
        backbone, tokenizer = build_backbone(config.backbone, corpus)
        return cls(config, backbone, tokenizer, action_normalizer, state_normalizer)

    @property
    def device(self) -> torch.device:
        return self.action_queries.device

    @property
    def state_dim(self) -> int | None:
        return self.state_normalizer.dim if self.state_normalizer is not None else None

    # ------------------------------------------------------------------ inputs

    def encode_inputs(
        self,
        frames: Frames | Mapping[str, Frames],
        instructions: str | Sequence[str],
        state: np.ndarray | torch.Tensor | None = None,
    ) -> EncodedInputs:
        """Raw camera frames + instructions (+ joint state) -> model inputs on the model's device.

        `frames`: (B, H, W, 3) uint8 at any resolution for a single-camera model, or a mapping
        camera name -> such frames. They are resized with `wmpo_core.image_ops.resize_frames`
        (the one resize shared with the world model). `instructions`: one string per sample (or
        one for all). `state`: (B, J) joint values in robot units, required iff `use_state`.
        Returns {"pixels": (B, C, S, S, 3) uint8, "suffix_ids"/"suffix_mask": (B, T) long[,
        "state": (B, J) float32 normalized]}; dicts from several calls can be concatenated.
        """
        if not isinstance(frames, Mapping):
            if len(self.cameras) != 1:
                raise ValueError(
                    f"this model sees cameras {list(self.cameras)}: pass a mapping camera -> frames"
                )
            frames = {self.cameras[0]: frames}
        missing = [c for c in self.cameras if c not in frames]
        if missing:
            raise ValueError(
                f"frames for cameras {missing} are missing (model sees {list(self.cameras)}, got "
                f"{list(frames)})"
            )
        pixels = torch.stack([self._prepare_frames(frames[c], c) for c in self.cameras], dim=1)
        batch = pixels.shape[0]
        if isinstance(instructions, str):
            instructions = [instructions] * batch
        if len(instructions) != batch:
            raise ValueError(f"got {len(instructions)} instructions for {batch} frames")
        ids = torch.full((batch, self.config.max_suffix_tokens), self._pad_id, dtype=torch.long)
        mask = torch.zeros((batch, self.config.max_suffix_tokens), dtype=torch.long)
        for i, text in enumerate(instructions):
            tokens = self._suffix_tokens(text)
            ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[i, : len(tokens)] = 1
        inputs = {"pixels": pixels, "suffix_ids": ids.to(self.device), "suffix_mask": mask.to(self.device)}
        if self.state_normalizer is not None:
            if state is None:
                raise ValueError("this model uses the joint state (config.use_state): pass state (B, J)")
            state_np = state.detach().cpu().numpy() if isinstance(state, torch.Tensor) else np.asarray(state)
            if state_np.shape != (batch, self.state_normalizer.dim):
                raise ValueError(
                    f"state must be ({batch}, {self.state_normalizer.dim}), got {state_np.shape}"
                )
            normalized = self.state_normalizer.normalize(state_np)
            inputs["state"] = torch.as_tensor(normalized, dtype=torch.float32, device=self.device)
        return inputs

    def _prepare_frames(self, frames: Frames, camera: str) -> torch.Tensor:
        size = self.image_size
        if isinstance(frames, torch.Tensor):
            if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(
                    f"camera '{camera}': expected (B, H, W, 3) uint8 frames, got {tuple(frames.shape)} "
                    f"{frames.dtype}"
                )
            if tuple(frames.shape[1:3]) == (size, size):
                return frames.to(self.device)
            frames = frames.cpu().numpy()
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"camera '{camera}': expected (B, H, W, 3) uint8 RGB frames, got {frames.shape} "
                f"{frames.dtype}"
            )
        return torch.from_numpy(np.ascontiguousarray(resize_frames(frames, size))).to(self.device)

    def _suffix_tokens(self, instruction: str) -> list[int]:
        tokens = self._suffix_cache.get(instruction)
        if tokens is None:
            text = self._suffix_template.format(instruction=instruction.strip())
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(tokens) > self.config.max_suffix_tokens:
                raise ValueError(
                    f"instruction {instruction!r} takes {len(tokens)} tokens after the image; this model "
                    "takes at most "
                    f"{self.config.max_suffix_tokens} (config.max_suffix_tokens)"
                )
            if len(self._suffix_cache) < 4096:
                self._suffix_cache[instruction] = tokens
        return tokens

    # ------------------------------------------------------------------ forward

    def action_logits(self, inputs: EncodedInputs) -> torch.Tensor:
        """(B, K, A, num_bins) float32 logits of every action token, in one forward pass."""
        pixels = inputs["pixels"]
        batch = pixels.shape[0]
        dtype = self.backbone.dtype
        x = pixels.flatten(0, 1).permute(0, 3, 1, 2).float().div(255.0)
        x = ((x - self._pixel_mean) / self._pixel_std).to(dtype)
        vision = self.backbone.vision_model(pixel_values=x).last_hidden_state
        image_tokens = self.backbone.connector(vision).reshape(batch, -1, self.action_queries.shape[1])

        embed = self.backbone.text_model.get_input_embeddings()
        parts = [embed(self._prefix_ids).unsqueeze(0).expand(batch, -1, -1), image_tokens.to(dtype)]
        if self.state_proj is not None:
            parts.append(self.state_proj(inputs["state"]).unsqueeze(1).to(dtype))
        fixed_len = sum(p.shape[1] for p in parts)
        parts.append(embed(inputs["suffix_ids"]))
        num_queries = self.action_queries.shape[0]
        parts.append(self.action_queries.to(dtype).unsqueeze(0).expand(batch, -1, -1))
        embeds = torch.cat(parts, dim=1)
        ones = inputs["suffix_mask"].new_ones
        mask = torch.cat([ones((batch, fixed_len)), inputs["suffix_mask"], ones((batch, num_queries))], dim=1)
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        hidden = self.backbone.text_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        logits = self.action_head(hidden[:, -num_queries:].float())
        return logits.view(batch, self.chunk_size, self.action_dim, self.num_bins)

    @torch.no_grad()
    def sample(
        self,
        inputs: EncodedInputs,
        temperature: float = 1.6,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Action tokens (B, K, A) long and their log-probs (B, K, A) under softmax(logits / T).

        Greedy takes the argmax (the evaluation policy); its log-probs are still reported at T.
        Non-finite logits raise ValueError rather than decode to an action.
        """
        _check_temperature(temperature)
        logits = self.action_logits(inputs)
        if not bool(torch.isfinite(logits).all()):  # the argmax of NaN logits is a finite bin-0 action
            raise ValueError(
                f"policy {self.version}: non-finite action logits (NaN or infinity); refusing to decode them"
            )
        log_p = torch.log_softmax(logits / temperature, dim=-1)
        if greedy:
            tokens = logits.argmax(dim=-1)
        else:
            flat = log_p.exp().reshape(-1, self.num_bins)
            tokens = torch.multinomial(flat, 1, generator=generator).view(logits.shape[:-1])
        return tokens, log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def log_probs(
        self, inputs: EncodedInputs, tokens: torch.Tensor, temperature: float = 1.6
    ) -> torch.Tensor:
        """Exact, differentiable log pi(token) = log_softmax(logits / T)[token], shape (B, K, A)."""
        return self.log_probs_and_entropy(inputs, tokens, temperature)[0]

    def log_probs_and_entropy(
        self, inputs: EncodedInputs, tokens: torch.Tensor, temperature: float = 1.6
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`log_probs` and the entropy (nats) of each token's distribution at T, from one forward pass."""
        _check_temperature(temperature)
        expected = (inputs["pixels"].shape[0], self.chunk_size, self.action_dim)
        if tuple(tokens.shape) != expected:
            raise ValueError(f"tokens must have shape {expected}, got {tuple(tokens.shape)}")
        log_p = torch.log_softmax(self.action_logits(inputs) / temperature, dim=-1)
        chosen = log_p.gather(-1, tokens.to(log_p.device).long().unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(dim=-1)
        return chosen, entropy

    def tokens_to_actions(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(B, K, A) tokens -> (B, K, A) float64 robot-unit actions (numpy in -> numpy out)."""
        return self.action_tokenizer.tokens_to_actions(tokens)

    def actions_to_tokens(self, actions: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(..., A) robot-unit actions -> (..., A) int64 tokens."""
        return self.action_tokenizer.actions_to_tokens(actions)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for the argmax), got {temperature}")


def resolve_cameras(config: VLAConfig, robot_config: RobotConfig) -> tuple[str, ...]:
    cameras = config.cameras or (robot_config.cameras[0].name,)
    for name in cameras:
        try:
            spec = robot_config.camera(name)
        except KeyError as exc:
            raise VLAConfigError(str(exc.args[0])) from None
        if spec.channels != 3:
            raise VLAConfigError(
                f"camera '{name}' of robot '{robot_config.name}' is {spec.encoding}; the VLA takes RGB "
                "cameras"
            )
    return tuple(cameras)


def concat_inputs(batches: Sequence[EncodedInputs]) -> EncodedInputs:
    """Concatenate encoded inputs along the batch dimension (e.g. to re-score a rollout buffer)."""
    if not batches:
        raise ValueError("nothing to concatenate")
    keys = set(batches[0])
    if any(set(b) != keys for b in batches):
        raise ValueError("encoded inputs have different keys")
    return {k: torch.cat([b[k] for b in batches], dim=0) for k in batches[0]}


def cross_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean token-level cross-entropy of (B, K, A, N) logits against (B, K, A) target tokens."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
