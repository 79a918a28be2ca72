"""Image rewards on tiny random networks: JPEG compressibility, the LAION aesthetic predictor, a classifier."""
from __future__ import annotations

import io
import pickle

import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

from svdd_lightning import checkpoints
from svdd_lightning.core.reward import GuardedReward
from svdd_lightning.domains.images.networks import MNISTClassifier
from tiny_images import random_aesthetic_predictor
from svdd_lightning.domains.images.rewards import AestheticScore, ClassifierLogProb, Compressibility, clip_preprocess

VISION = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1, image_size=30,
              patch_size=10)
PROJECTION_DIM = 12


def test_a_flat_image_is_more_compressible_than_noise():
    torch.manual_seed(0)
    flat, noise = torch.full((3, 32, 32), 0.4), torch.rand(3, 32, 32)
    reward = Compressibility()
    flat_score, noise_score = reward([flat, noise])
    assert flat_score > noise_score and noise_score < 0
    array = (noise * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    assert noise_score == pytest.approx(-buffer.tell() / 1000)
    assert reward(torch.stack([flat, noise])) == [flat_score, noise_score]
    grey = reward([torch.full((1, 32, 32), 0.4), torch.rand(1, 32, 32)])
    assert grey[0] > grey[1]


def test_compressibility_in_worker_processes_matches_and_is_picklable():
    images = list(torch.rand(40, 3, 16, 16))  # at least 2 x 16: chunks go to the workers
    reward = Compressibility(processes=2)
    with pytest.raises(ValueError, match="Compressibility.processes"):
        Compressibility(processes=0)
    try:
        assert reward(images) == Compressibility()(images)
        assert reward.workers._pool is not None and pickle.loads(pickle.dumps(reward)).workers._pool is None
    finally:
        reward.close()
    assert reward.workers._pool is None


@pytest.fixture(scope="module")
def aesthetic_files(tmp_path_factory):
    """A tiny CLIP as a vision-with-projection folder and as a whole CLIP model, and a random predictor
    state dict with the published keys (input size: the tiny CLIP's projection dimension)."""
    root = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=PROJECTION_DIM, **VISION))
    vision.save_pretrained(root / "vision")
    CLIPModel(CLIPConfig(text_config=dict(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                          num_hidden_layers=1, vocab_size=50, bos_token_id=0,
                                          eos_token_id=1, pad_token_id=1),
                         vision_config=VISION, projection_dim=PROJECTION_DIM)).save_pretrained(root / "clip")
    state = random_aesthetic_predictor(PROJECTION_DIM)
    torch.save(state, root / "predictor.pth")
    return root, state


@pytest.mark.parametrize("folder", ["vision", "clip"])
def test_aesthetic_score_is_the_published_mlp_on_normalised_clip_embeddings(aesthetic_files, folder):
    root, state = aesthetic_files
    reward = AestheticScore(str(root / folder), str(root / "predictor.pth"))
    torch.manual_seed(1)
    images = torch.rand(3, 3, 30, 30)  # CLIP's input size: preprocessing only normalises
    scores = reward(list(images))
    if folder == "clip":
        clip = CLIPModel.from_pretrained(root / "clip")
        features = clip.get_image_features(pixel_values=clip_preprocess(images, 30))
        embedding = features if torch.is_tensor(features) else features.pooler_output  # transformers 4 / 5
    else:
        embedding = CLIPVisionModelWithProjection.from_pretrained(root / "vision")(
            pixel_values=clip_preprocess(images, 30)).image_embeds
    h = embedding / embedding.norm(dim=-1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # linear layers only, as published
        h = h @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    assert torch.allclose(torch.tensor(scores), h.squeeze(-1).detach(), atol=1e-5)
    grey = torch.rand(2, 1, 20, 40, requires_grad=True)  # resized, centre-cropped, repeated to RGB
    (grad,) = torch.autograd.grad(reward.relaxed(grey).sum(), grey)
    assert grad.abs().sum() > 0


def test_clip_preprocess_resizes_the_short_side_and_centre_crops():
    images = torch.zeros(1, 1, 20, 40)
    images[..., 10:30] = 1.0  # the centre half of the width
    pixels = clip_preprocess(images, 10)
    assert pixels.shape == (1, 3, 10, 10)
    assert torch.allclose(pixels[0, :, 5, 5], (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073]))
                          / torch.tensor([0.26862954, 0.26130258, 0.27577711]), atol=1e-4)


def test_aesthetic_predictor_must_match_the_clip_projection(aesthetic_files, tmp_path):
    root, state = aesthetic_files
    torch.save({**state, "layers.0.weight": torch.randn(1024, 7)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="7-dim"):
        AestheticScore(str(root / "vision"), str(tmp_path / "wrong.pth"))


def test_classifier_log_prob_is_differentiable_for_dps(tmp_path):
    torch.manual_seed(0)
    network = MNISTClassifier(channels=(4, 8, 8)).eval()
    checkpoints.save(network, tmp_path / "classifier")
    images = torch.rand(4, 1, 32, 32)
    rewards = [ClassifierLogProb(str(tmp_path / "classifier"), target_class=c) for c in range(10)]
    scores = torch.tensor([r(list(images)) for r in rewards])  # (classes, images)
    assert torch.allclose(scores.exp().sum(dim=0), torch.ones(4), atol=1e-5)
    expected = torch.log_softmax(network(images), dim=-1)[:, 3]
    assert torch.allclose(scores[3], expected.detach(), atol=1e-6)
    guidance = GuardedReward(rewards[3]).relaxed()
    pixels = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(guidance(pixels).sum(), pixels)
    assert grad.abs().sum() > 0


def test_aesthetic_score_names_a_missing_path_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"AestheticScore\.clip_path: no folder at") as err:
        AestheticScore(str(tmp_path / "no-clip"), str(tmp_path / "no.pth"))
    assert "\n" not in str(err.value)
