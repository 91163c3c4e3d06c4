"""The tiny VLA built from a transformers config: inputs, exact log-probs, temperature, layout options."""

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from wmpo_core.image_ops import resize_frames
from wmpo_core.normalization import ActionNormalizer
from wmpo_core.robot_config import load_robot_config, parse_robot_config
from wmpo_core.vla.config import VLAConfigError, load_recipe
from wmpo_core.vla.model import VLA, concat_inputs

INSTRUCTION = "pick up the cube"


@pytest.fixture(scope="module")
def robot():
    return load_robot_config("so101_sim")


@pytest.fixture(scope="module")
def model(robot, tiny_vla):
    vla = tiny_vla(robot)
    with torch.no_grad():  # a fresh head is nearly uniform; spread its logits as training would
        vla.action_head[-1].weight.mul_(40.0)
    return vla


def frames(batch, size=128, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_interface_attributes_and_shapes(model):
    assert (model.chunk_size, model.action_dim, model.num_bins, model.image_size) == (8, 4, 256, 64)
    inputs = model.encode_inputs(frames(3), [INSTRUCTION] * 3)
    assert inputs["pixels"].shape == (3, 1, 64, 64, 3) and inputs["pixels"].dtype == torch.uint8
    logits = model.action_logits(inputs)
    assert logits.shape == (3, 8, 4, 256) and logits.dtype == torch.float32
    tokens, log_probs = model.sample(inputs)
    assert tokens.shape == (3, 8, 4) and tokens.dtype == torch.long
    assert log_probs.shape == (3, 8, 4) and torch.all(log_probs <= 0)
    actions = model.tokens_to_actions(tokens)
    assert actions.shape == (3, 8, 4) and actions.dtype == torch.float64
    assert torch.equal(model.actions_to_tokens(actions), tokens)


def test_frames_at_any_resolution_use_the_shared_resize(model):
    raw = np.random.default_rng(3).integers(0, 256, (2, 150, 200, 3), dtype=np.uint8)
    inputs = model.encode_inputs(raw, INSTRUCTION)
    np.testing.assert_array_equal(inputs["pixels"][:, 0].numpy(), resize_frames(raw, 64))
    # torch uint8 frames (e.g. from the world model) are accepted as well, with the same result
    again = model.encode_inputs(torch.from_numpy(raw), INSTRUCTION)
    assert torch.equal(again["pixels"], inputs["pixels"])


def test_sampled_log_probs_equal_an_independent_recomputation(model):
    inputs = model.encode_inputs(frames(4, seed=1), INSTRUCTION)
    temperature = 1.6
    tokens, log_probs = model.sample(inputs, temperature, generator=torch.Generator().manual_seed(0))
    for i in range(4):  # one sample at a time, softmax in float64 numpy
        single = {k: v[i : i + 1] for k, v in inputs.items()}
        with torch.no_grad():
            logits = model.action_logits(single)[0].double().numpy() / temperature
        log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        expected = np.take_along_axis(logits, tokens[i].numpy()[..., None], -1)[..., 0] - log_z
        np.testing.assert_allclose(log_probs[i].numpy(), expected, atol=2e-5)
    # log_probs() gives the same values, differentiably
    recomputed = model.log_probs(inputs, tokens, temperature)
    torch.testing.assert_close(recomputed, log_probs, atol=2e-5, rtol=0)
    recomputed.sum().backward()
    assert model.action_queries.grad is not None and model.action_queries.grad.abs().sum() > 0
    assert next(model.backbone.vision_model.parameters()).grad is not None
    model.zero_grad(set_to_none=True)


def test_temperature_shapes_the_distribution(model):
    inputs = model.encode_inputs(frames(1, seed=2), INSTRUCTION)
    with torch.no_grad():
        logits = model.action_logits(inputs)
    entropies = []
    for temperature in (0.5, 1.0, 1.6, 3.0):
        p = torch.softmax(logits / temperature, -1)
        entropies.append(float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()))
    assert entropies == sorted(entropies) and entropies[-1] > entropies[0] + 0.1

    # Samples follow softmax(logits / T): empirical frequencies over many draws, every token position.
    draws = 500
    batch = {k: v.expand(draws, *v.shape[1:]) for k, v in inputs.items()}
    tokens, _ = model.sample(batch, temperature=1.6, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits[0] / 1.6, -1).double()  # (K, A, 256)
    counts = torch.zeros_like(probs).scatter_add_(
        -1, tokens.permute(1, 2, 0), torch.ones_like(tokens.permute(1, 2, 0), dtype=torch.float64)
    )
    total_variation = 0.5 * (counts / draws - probs).abs().sum(-1)
    assert float(total_variation.mean()) < 0.1 and float(total_variation.max()) < 0.2
    wrong_t = 0.5 * (counts / draws - torch.softmax(logits[0] / 1.0, -1).double()).abs().sum(-1)
    assert float(wrong_t.mean()) > 0.15  # the check can tell T=1.6 from T=1

    greedy, _ = model.sample(inputs, greedy=True)
    assert torch.equal(greedy, logits.argmax(-1))
    cold, _ = model.sample(inputs, temperature=1e-4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(cold, greedy)  # T -> 0 approaches greedy
    hot, _ = model.sample(inputs, temperature=1.6, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(hot, greedy)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(inputs, temperature=0.0)


def test_seeded_generator_reproduces_samples(model):
    inputs = model.encode_inputs(frames(2, seed=4), INSTRUCTION)
    a, _ = model.sample(inputs, generator=torch.Generator().manual_seed(7))
    b, _ = model.sample(inputs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_instruction_padding_and_batching_do_not_change_outputs(model):
    images = frames(2, seed=5)
    mixed = model.encode_inputs(images, [INSTRUCTION, "put the red cube into the blue bowl"])
    alone = model.encode_inputs(images[:1], [INSTRUCTION])
    with torch.no_grad():
        torch.testing.assert_close(
            model.action_logits(mixed)[:1], model.action_logits(alone), atol=1e-4, rtol=1e-4
        )
        joined = concat_inputs(
            [alone, model.encode_inputs(images[1:], ["put the red cube into the blue bowl"])]
        )
        torch.testing.assert_close(
            model.action_logits(joined), model.action_logits(mixed), atol=1e-4, rtol=1e-4
        )
        # the instruction does reach the action head
        other = model.encode_inputs(images[:1], ["open the drawer"])
        assert not torch.allclose(model.action_logits(other), model.action_logits(alone))


def test_bad_inputs_are_refused_clearly(model):
    with pytest.raises(ValueError, match="max_suffix_tokens"):
        model.encode_inputs(frames(1), "pick up the cube " * 20)
    with pytest.raises(ValueError, match="uint8"):
        model.encode_inputs(frames(1).astype(np.float32), INSTRUCTION)
    with pytest.raises(ValueError, match="2 instructions for 1 frames"):
        model.encode_inputs(frames(1), [INSTRUCTION, INSTRUCTION])
    inputs = model.encode_inputs(frames(1), INSTRUCTION)
    with pytest.raises(ValueError, match="tokens must have shape"):
        model.log_probs(inputs, torch.zeros(1, 8, 3, dtype=torch.long))


def test_wrist_camera_and_proprioception_by_config(robot):
    data = robot.model_dump(mode="json")
    data["cameras"].append({**data["cameras"][0], "name": "wrist", "topic": "/so101/camera/wrist/image_raw"})
    data["driver"]["image_keys"]["wrist"] = "pixels/wrist"
    two_cams = parse_robot_config(data)
    config = dataclasses.replace(load_recipe("tiny").model, cameras=("front", "wrist"), use_state=True)
    state_norm = ActionNormalizer(-np.ones(6), np.ones(6))
    model = VLA.create(config, two_cams, ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1]), state_norm).eval()
    images = {"front": frames(2, seed=6), "wrist": frames(2, seed=7)}
    with pytest.raises(ValueError, match="use_state"):
        model.encode_inputs(images, INSTRUCTION)
    with pytest.raises(ValueError, match="mapping camera -> frames"):
        model.encode_inputs(images["front"], INSTRUCTION, state=np.zeros((2, 6)))
    a = model.encode_inputs(images, INSTRUCTION, state=np.zeros((2, 6)))
    b = model.encode_inputs(images, INSTRUCTION, state=np.full((2, 6), 0.5))
    assert a["pixels"].shape == (2, 2, 64, 64, 3) and a["state"].shape == (2, 6)
    with torch.no_grad():
        assert model.action_logits(a).shape == (2, 8, 4, 256)
        assert not torch.allclose(model.action_logits(a), model.action_logits(b))  # the state is seen
        c = model.encode_inputs(
            {"front": images["front"], "wrist": frames(2, seed=8)}, INSTRUCTION, state=np.zeros((2, 6))
        )
        assert not torch.allclose(model.action_logits(a), model.action_logits(c))  # the wrist camera is seen
    with pytest.raises(VLAConfigError, match="no camera 'gripper_cam'"):
        VLA.create(
            dataclasses.replace(config, cameras=("gripper_cam",)),
            two_cams,
            ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1]),
            state_norm,
        )


def test_pretrained_backbone_loads_from_a_local_model_directory(robot, tmp_path):
    """The realistic path: AutoModel.from_pretrained on a SmolVLM/Idefics3 checkpoint directory
    (saved as ...ForConditionalGeneration, like the hub's) plus its tokenizer."""
    from transformers import Idefics3ForConditionalGeneration
    from wmpo_core.vla.checkpoint import load_checkpoint, save_checkpoint
    from wmpo_core.vla.config import BackboneConfig
    from wmpo_core.vla.model import build_backbone

    tiny = load_recipe("tiny").model
    backbone, tokenizer = build_backbone(tiny.backbone, [tiny.prompt_template, INSTRUCTION])
    published = Idefics3ForConditionalGeneration(backbone.config)
    published.save_pretrained(tmp_path / "hub_model")
    tokenizer.save_pretrained(tmp_path / "hub_model")

    config = dataclasses.replace(
        tiny, backbone=BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "hub_model"))
    )
    model = VLA.create(config, robot, ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1])).eval()
    assert torch.equal(
        model.backbone.text_model.layers[0].mlp.up_proj.weight,
        published.model.text_model.layers[0].mlp.up_proj.weight,
    )
    assert torch.equal(
        model.backbone.vision_model.embeddings.patch_embedding.weight,
        published.model.vision_model.embeddings.patch_embedding.weight,
    )
    # a checkpoint of it no longer needs the source directory
    save_checkpoint(model, tmp_path / "ckpt", robot)
    shutil.rmtree(tmp_path / "hub_model")
    loaded = load_checkpoint(tmp_path / "ckpt", robot)
    inputs = model.encode_inputs(frames(1), INSTRUCTION)
    with torch.no_grad():
        assert torch.equal(loaded.action_logits(inputs), model.action_logits(inputs))

    with pytest.raises(VLAConfigError, match="cannot load pretrained backbone"):
        VLA.create(
            dataclasses.replace(
                config, backbone=BackboneConfig(kind="pretrained", name_or_path=str(tmp_path / "absent"))
            ),
            robot,
            ActionNormalizer([-1, -1, -1, 0], [1, 1, 1, 1]),
        )
