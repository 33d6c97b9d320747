"""Every real family through the same adapter API, on tiny random configs of its real diffusers and
transformers classes saved in diffusers layout (nothing downloaded): load → encode → velocity → decode."""

import copy

import pytest
import torch
from diffusers import (AutoencoderKLCogVideoX, AutoencoderKLHunyuanVideo, AutoencoderKLWan, CogVideoXDDIMScheduler,
                       CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast, T5Config,
                          T5EncoderModel, UMT5Config, UMT5EncoderModel)

from dcm.config import ConfigError, DiscriminatorConfig, LoraConfig, load_config
from dcm.models.discriminator import Discriminator
from dcm.models.dual_expert import Student
from dcm.models.family import TeacherFolderError
from dcm.models.registry import family_class
from dcm.models.tiling import Tiling, geometry_problem
from dcm.sampling import guided_velocity
from dcm.stages.shard import run_shard_stage
from tests.conftest import REPO

pytestmark = pytest.mark.fast

WORDS = ["[PAD]", "[UNK]", "</s>", "a", "red", "circle", "moving", "left", "on", "black", "background"]
VOCAB = len(WORDS)


def save_tokenizer(folder):
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")
    fast.save_pretrained(folder)


def build_wan(folder):
    torch.manual_seed(0)
    WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                          out_channels=4, text_dim=16, freq_dim=16, ffn_dim=16, num_layers=2,
                          rope_max_seq_len=32).save_pretrained(folder / "transformer")
    AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                     latents_mean=[0.1] * 4, latents_std=[2.0] * 4).save_pretrained(folder / "vae")
    UMT5EncoderModel(UMT5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=16, num_layers=1, num_heads=2)).save_pretrained(
        folder / "text_encoder")
    save_tokenizer(folder / "tokenizer")


def build_hunyuan(folder):
    torch.manual_seed(0)
    HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                   num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
                                   patch_size_t=1, guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
                                   rope_axes_dim=(2, 2, 4)).save_pretrained(folder / "transformer")
    AutoencoderKLHunyuanVideo(in_channels=3, out_channels=3, latent_channels=4,
                              down_block_types=("HunyuanVideoDownBlock3D",) * 4,
                              up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                              layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=8,
                              temporal_compression_ratio=4).save_pretrained(folder / "vae")
    LlamaModel(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=16, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder / "text_encoder")
    CLIPTextModel(CLIPTextConfig(vocab_size=VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, projection_dim=8, eos_token_id=2)).save_pretrained(
        folder / "text_encoder_2")
    save_tokenizer(folder / "tokenizer")
    save_tokenizer(folder / "tokenizer_2")


def build_cogvideox(folder):
    torch.manual_seed(0)
    CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                time_embed_dim=4, text_embed_dim=16, num_layers=1, sample_width=4, sample_height=4,
                                sample_frames=5, patch_size=2, temporal_compression_ratio=4,
                                max_text_seq_length=8).save_pretrained(folder / "transformer")
    AutoencoderKLCogVideoX(in_channels=3, out_channels=3, latent_channels=4,
                           down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
                           block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=2,
                           temporal_compression_ratio=4).save_pretrained(folder / "vae")
    T5EncoderModel(T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=16, num_layers=1, num_heads=2)).save_pretrained(
        folder / "text_encoder")
    save_tokenizer(folder / "tokenizer")
    CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=3.0,
                           beta_schedule="scaled_linear").save_pretrained(folder / "scheduler")


BUILDERS = {"wan": build_wan, "hunyuan": build_hunyuan, "cogvideox": build_cogvideox}
TEXT_TOKENS = 8


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_round_trip_through_the_adapter(tmp_path, name):
    BUILDERS[name](tmp_path)
    teacher = family_class(name).load(tmp_path, max_text_tokens=TEXT_TOKENS)
    frames, height, width = 9, 32, 32  # 3 latent frames: CogVideoX decodes latent frames in odd counts
    video = torch.rand(2, 3, frames, height, width) * 2 - 1
    with torch.no_grad():
        latents = teacher.encode_video(video)
        assert tuple(latents.shape[1:]) == teacher.latent_shape(frames, height, width)
        cond = teacher.encode_prompts(["a red circle moving left", "on black background"])
        uncond = teacher.encode_prompts([""] * 2)
        assert cond["embeds"].shape[0] == 2
        sigma = torch.tensor([0.9, 0.3])
        velocity = guided_velocity(teacher, latents, sigma, cond, uncond, guidance_scale=3.0)
        assert velocity.shape == latents.shape and torch.isfinite(velocity).all()
        decoded = teacher.decode_latents(latents)
        assert decoded.shape == video.shape and decoded.abs().max() <= 1
        grid = teacher.token_grid(tuple(latents.shape[1:]))
        with teacher.tap_blocks(every=1) as taps:
            teacher.velocity(latents, sigma, cond, guidance=3.0)
        assert len(taps) == len(teacher.blocks())
        tokens = grid[0] * grid[1] * grid[2]
        assert any(t.shape[1] >= tokens for t in taps)  # the image tokens (text tokens may be appended)
    for module in teacher.detail_modules:
        assert hasattr(teacher.transformer, module), module


def test_cogvideox_velocity_is_rectified_flow(tmp_path):
    """The VP → RF conversion: from the model's x0/eps estimates, x_s = s·eps + (1 − s)·x0 holds."""
    build_cogvideox(tmp_path)
    teacher = family_class("cogvideox").load(tmp_path, max_text_tokens=TEXT_TOKENS)
    sigma = torch.tensor([0.2, 0.5, 0.95])
    t, a, b = teacher.vp_coefficients(sigma)
    assert torch.allclose(b / (a + b), sigma.double(), atol=1e-4)
    assert torch.all(t[1:] > t[:-1])


def test_incomplete_folder_lists_everything_missing(tmp_path):
    build_wan(tmp_path)
    for weights in (tmp_path / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    (tmp_path / "tokenizer" / "tokenizer_config.json").unlink()
    for json_file in (tmp_path / "tokenizer").glob("*.json"):
        json_file.unlink()
    with pytest.raises(TeacherFolderError) as error:
        family_class("wan").load(tmp_path, max_text_tokens=TEXT_TOKENS)
    assert "text_encoder/*.safetensors" in str(error.value) and "tokenizer/config.json" in str(error.value)


def test_missing_folder_says_nothing_is_downloaded(tmp_path):
    with pytest.raises(TeacherFolderError, match="nothing is downloaded"):
        family_class("hunyuan").load(tmp_path / "nope", max_text_tokens=TEXT_TOKENS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_dual_expert_and_discriminator_on_every_family(tmp_path, name):
    """The DCM student (LoRA + copied layers, per-sample routing) and the discriminator's token grid work
    on each real family's classes, not only on the toy's."""
    BUILDERS[name](tmp_path)
    teacher = family_class(name).load(tmp_path, max_text_tokens=TEXT_TOKENS)
    latents = torch.randn(2, *teacher.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(0))
    cond = teacher.encode_prompts(["a red circle moving left", "on black background"])
    guidance = 3.0 if teacher.guidance == "embedded" else None
    student = Student(teacher, copy.deepcopy(teacher.transformer), guidance=guidance)
    lora = LoraConfig(rank=2, alpha=4, targets=["to_q", "to_k", "to_v", "to_out.0"])
    student.add_detail_expert("lora", teacher.detail_modules, lora, threshold=0.5)
    with torch.no_grad():
        for p in student.detail_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        sigma = torch.tensor([0.9, 0.3])
        mixed = student(latents, sigma, cond)
        semantic = student.expert_velocity("semantic", latents[:1], sigma[:1], {k: v[:1] for k, v in cond.items()})
        detail = student.expert_velocity("detail", latents[1:], sigma[1:], {k: v[1:] for k, v in cond.items()})
        assert torch.equal(mixed[:1], semantic) and torch.equal(mixed[1:], detail)
        with teacher.tap_blocks(every=1) as taps:
            teacher.velocity(latents, sigma, cond, guidance=3.0)
    grid = teacher.token_grid(tuple(latents.shape))
    heads = Discriminator([teacher.feature_width()] * len(taps), DiscriminatorConfig(
        tap_every=1, hidden=8, groups=2, residual=True, kernel=1, real="target", noise_window="detail",
        leaky_slope=0.01, chance_accuracy=0.55, lr=1e-5, betas=(0.0, 0.999), weight_decay=0.0,
        updates_per_step=1, warmup_steps=0))
    logits = heads(taps, grid)
    assert [tuple(x.shape) for x in logits] == [(2, *grid)] * len(taps)
    assert teacher.project_features(taps[0]).shape[:2] == taps[0].shape[:2]


def test_tiling_rules_by_hand():
    wan = Tiling(temporal=4, spatial=8, patch=(1, 2, 2), causal=True)
    assert geometry_problem(wan, 9, 32, 48, "wan") is None
    problem = geometry_problem(wan, 8, 40, 56, "wan")
    assert "data.height=40 (a multiple of 16: 32 or 48)" in problem and "data.width=56 (a multiple of 16: 48 or 64)" in problem
    assert "data.frames=8 (1 + a multiple of 4: 5 or 9)" in problem
    toy = Tiling(temporal=1, spatial=1, patch=(2, 4, 4), causal=False)
    assert geometry_problem(toy, 8, 32, 32, "toy") is None
    assert "data.frames=7 (a multiple of 2: 6 or 8)" in geometry_problem(toy, 7, 32, 32, "toy")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_each_family_reads_its_tiling_from_the_folder_configs(tmp_path, name):
    BUILDERS[name](tmp_path)
    family = family_class(name)
    tiling = family.tiling(tmp_path)
    loaded = family.load(tmp_path, 8)
    frames = 1 + 2 * tiling.temporal * tiling.patch[0]  # a length every causal VAE here keeps whole
    height, width = tiling.pixel_multiple
    assert loaded.patch_size == tiling.patch
    assert loaded.latent_shape(frames, height, width)[2:] == (height // tiling.spatial, width // tiling.spatial)


def test_a_geometry_the_teacher_cannot_tile_is_refused_before_any_work(tmp_path):
    build_wan(tmp_path / "wan")
    cfg = load_config(REPO / "params.yaml", ["teacher.family=wan", f"teacher.path={tmp_path / 'wan'}", "data.frames=9",
                                             "data.height=40", "data.width=56", f"shard.dir={tmp_path / 'shards'}"])
    with pytest.raises(ConfigError) as caught:
        run_shard_stage(cfg)
    assert str(caught.value).startswith(f"the wan teacher in {tmp_path / 'wan'} cannot tile data.height=40 "
                                        "(a multiple of 16: 32 or 48), data.width=56 (a multiple of 16: 48 or 64)")
    assert not (tmp_path / "shards").exists()
