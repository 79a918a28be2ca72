"""PickScore and HPS v2 on tiny random networks saved the way users have them (a CLIPModel folder, an
OpenCLIP state dict), scoring prompt-image pairs, also through a Stable Diffusion decode."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from svdd_lightning.domains.images.diffusers_model import StableDiffusion
from svdd_lightning.domains.images.preference import HPSv2, PickScore
from svdd_lightning.domains.images.rewards import clip_preprocess
from tiny_images import build_tiny_sd, save_tiny_clip_tokenizer

TEXT = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1, vocab_size=60,
            max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1)
VISION = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=1, image_size=30,
              patch_size=10)
PROMPTS = ["a cat", "a red dog"]


@pytest.fixture(scope="module")
def pickscore_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=6, logit_scale_init_value=2.0))
    clip.save_pretrained(root, safe_serialization=True)
    save_tiny_clip_tokenizer(root)
    return root


def test_pickscore_is_clips_logit_of_each_pair(pickscore_folder):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 30, 30)
    reward = PickScore(str(pickscore_folder), prompt="a cat")
    clip = CLIPModel.from_pretrained(pickscore_folder).eval()
    tokens = CLIPTokenizer.from_pretrained(pickscore_folder)(PROMPTS, padding="max_length", max_length=12,
                                                                return_tensors="pt")
    with torch.no_grad():
        logits = clip(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                      pixel_values=clip_preprocess(images, 30)).logits_per_image  # (image, prompt)
    assert reward.relaxed(images, PROMPTS) == pytest.approx(logits.diagonal(), abs=1e-5)
    assert reward(images) == pytest.approx(logits[:, 0].tolist(), abs=1e-5)  # the reward's own prompt
    tagged = list(images)
    for image, prompt in zip(tagged, PROMPTS[::-1]):
        image.prompt = prompt  # decoded images carry their prompt
    assert reward(tagged) == pytest.approx([float(logits[0, 1]), float(logits[1, 0])], abs=1e-5)
    grad = torch.autograd.functional.jacobian(lambda x: reward.relaxed(x).sum(), images[:1])
    assert grad.abs().sum() > 0


def test_a_preference_reward_without_prompts_says_which_setting(pickscore_folder):
    with pytest.raises(ValueError, match=r"^PickScore.prompt: .* give the reward a prompt"):
        PickScore(str(pickscore_folder))(torch.rand(1, 3, 30, 30))
    with pytest.raises(FileNotFoundError, match="PickScore.model_path"):
        PickScore(str(pickscore_folder / "missing"))


def test_stable_diffusion_states_are_scored_against_their_own_prompts(pickscore_folder, tmp_path):
    sd = StableDiffusion(str(build_tiny_sd(tmp_path / "sd")), PROMPTS, num_steps=2)
    reward = PickScore(str(pickscore_folder))
    x0 = sd.initial_state([torch.Generator().manual_seed(i) for i in range(3)], torch.tensor([0, 1, 0]))
    decoded = sd.decode(x0)
    assert [image.prompt for image in decoded] == ["a cat", "a red dog", "a cat"]
    direct = reward.score_states(sd, x0)
    assert direct.tolist() == pytest.approx(reward(decoded), abs=1e-5)
    pairs = reward.relaxed(torch.stack(decoded), ["a cat", "a red dog", "a cat"])
    assert direct.tolist() == pytest.approx(pairs.tolist(), abs=1e-5)
    assert reward.score_states(sd, {**x0, "prompt_id": torch.tensor([1, 1, 1])}).tolist() != direct.tolist()


class Block(nn.Module):
    """OpenCLIP's ResidualAttentionBlock (pre-norm, nn.MultiheadAttention, GELU MLP), with its parameter names."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(),
                                             c_proj=nn.Linear(4 * width, width)))

    def forward(self, x, mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Tower(nn.Module):
    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(Block(width, heads) for _ in range(layers))

    def forward(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class TinyOpenCLIP(nn.Module):
    """An OpenCLIP ViT CLIP with the state-dict layout of HPS v2's checkpoint, written from OpenCLIP's forward."""

    def __init__(self, width=8, patch=10, grid=3, embed=6, vocab=60, context=12) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.visual.class_embedding = nn.Parameter(torch.randn(width))
        self.visual.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width))
        self.visual.ln_pre, self.visual.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.visual.transformer = Tower(width, 4, 2)  # head width 2 here, 4 in the text tower (as 80 and 64)
        self.visual.proj = nn.Parameter(torch.randn(width, embed))
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width))
        self.transformer = Tower(width, 2, 2)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        for norm in [m for m in self.modules() if isinstance(m, nn.LayerNorm)]:
            nn.init.normal_(norm.weight, 1.0, 0.2), nn.init.normal_(norm.bias, 0.0, 0.2)

    def encode_image(self, pixels):
        v = self.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], dim=1) + v.positional_embedding
        return v.ln_post(v.transformer(v.ln_pre(x))[:, 0]) @ v.proj

    def encode_text(self, ids, eos: int):
        n = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:n]
        mask = torch.full((n, n), float("-inf")).triu(1)
        x = self.ln_final(self.transformer(x, mask))
        return x[torch.arange(len(x)), (ids == eos).int().argmax(-1)] @ self.text_projection  # the end token


def test_hpsv2_reads_an_openclip_checkpoint_and_scores_cosine_similarity(tmp_path):
    torch.manual_seed(0)
    reference = TinyOpenCLIP().eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, tmp_path / "hps.pt")
    tokenizer_folder = save_tiny_clip_tokenizer(tmp_path / "tokenizer")
    reward = HPSv2(str(tmp_path / "hps.pt"), str(tokenizer_folder), vision_head_width=2, text_head_width=4)
    images = torch.rand(3, 3, 30, 30)
    prompts = ["a cat", "a red dog", "a cat"]
    ids = CLIPTokenizer.from_pretrained(tokenizer_folder)(prompts, padding="max_length", max_length=12,
                                                          return_tensors="pt").input_ids
    with torch.no_grad():
        image = reference.encode_image(clip_preprocess(images, 30))
        text = reference.encode_text(ids, eos=1)
    expected = torch.cosine_similarity(image, text, dim=-1)
    assert reward.relaxed(images, prompts) == pytest.approx(expected, abs=1e-5)
    assert len(set(reward.relaxed(images[:1].expand(2, -1, -1, -1), PROMPTS).tolist())) == 2
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="HPSv2.checkpoint: .* not an OpenCLIP"):
        HPSv2(str(tmp_path / "other.pt"), str(tokenizer_folder))
    with pytest.raises(ValueError, match="HPSv2.vision_head_width: 3 does not divide"):
        HPSv2(str(tmp_path / "hps.pt"), str(tokenizer_folder), vision_head_width=3)
    wrong = HPSv2(str(tmp_path / "hps.pt"), str(tokenizer_folder), vision_head_width=4, text_head_width=4)
    assert wrong.relaxed(images, prompts) != pytest.approx(expected, abs=1e-5)  # the head split matters


def test_image_reward_reads_the_published_layout_and_scores_the_cls_feature(tmp_path):
    import json

    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    from svdd_lightning.domains.images.preference import IMAGE_REWARD_MEAN, IMAGE_REWARD_STD, ImageRewardScore
    from svdd_lightning.domains.images.rewards import AestheticMLP

    torch.manual_seed(0)
    med = dict(vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
               max_position_embeddings=40, layer_norm_eps=1e-12, hidden_act="gelu", encoder_width=12)
    (tmp_path / "med_config.json").write_text(json.dumps(med))
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=12, intermediate_size=24, num_hidden_layers=2,
                                              num_attention_heads=3, image_size=32, patch_size=16,
                                              layer_norm_eps=1e-6)).eval()
    text = BlipTextModel(BlipTextConfig(vocab_size=40, hidden_size=8, encoder_hidden_size=12, intermediate_size=16,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40),
                         add_pooling_layer=False).eval()
    mlp = AestheticMLP(8).eval()
    timm_names = {"embeddings.class_embedding": "cls_token", "embeddings.position_embedding": "pos_embed",
                  "embeddings.patch_embedding": "patch_embed.proj", "post_layernorm": "norm", "layer_norm1": "norm1",
                  "layer_norm2": "norm2", "self_attn.qkv": "attn.qkv", "self_attn.projection": "attn.proj",
                  "encoder.layers": "blocks"}  # BLIP's timm ViT names, as in ImageReward.pt
    state = {}
    for key, value in vision.state_dict().items():
        for hf, timm in timm_names.items():
            key = key.replace(hf, timm)
        state[f"blip.visual_encoder.{key}"] = value
    state.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
    state.update({f"mlp.{k}": v for k, v in mlp.state_dict().items()})
    torch.save(state, tmp_path / "ImageReward.pt")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "red", "dog"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "bert")
    reward = ImageRewardScore(str(tmp_path / "ImageReward.pt"), str(tmp_path / "med_config.json"),
                              str(tmp_path / "bert"), head_width=4)
    images, prompts = torch.rand(2, 3, 32, 32), ["a cat", "a red dog"]
    tokens = BertTokenizer.from_pretrained(tmp_path / "bert")(prompts, padding="max_length", max_length=35,
                                                              return_tensors="pt")
    with torch.no_grad():
        image_tokens = vision(pixel_values=clip_preprocess(images, 32)).last_hidden_state
        cls = text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                   encoder_hidden_states=image_tokens).last_hidden_state[:, 0]
        expected = (mlp(cls).squeeze(-1) - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD
    assert reward.relaxed(images, prompts) == pytest.approx(expected, abs=1e-5)
    swapped = reward.relaxed(images, prompts[::-1])
    assert not torch.allclose(swapped, expected)  # the prompt enters through cross-attention
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.query.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="ImageRewardScore.checkpoint: the text encoder misses"):
        ImageRewardScore(str(tmp_path / "broken.pt"), str(tmp_path / "med_config.json"), str(tmp_path / "bert"),
                         head_width=4)
