"""Typed configuration: `params.yaml` → one validated tree that every stage reads.

Unknown keys and wrong types are errors that name the key path. Overrides use the `key.sub=value`
form of `dvc exp run -S`, so a value means the same thing on the command line and in DVC.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dcm.schedule import inference_sigmas, method_edges

DEFAULT_PARAMS = Path("params.yaml")

# Unit vectors in image coordinates (x to the right, y downwards): the meaning of each motion word.
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "down-right": (math.sqrt(0.5), math.sqrt(0.5)),
    "still": (0.0, 0.0),
}
SHAPE_NAMES = ("circle", "square", "triangle", "diamond")
# Object surfaces of the textured profile (dcm/data/shapes.py draws them, dcm/eval/texture.py judges them):
# plain, vertical stripes, a checkerboard, per-pixel speckle.
TEXTURE_NAMES = ("plain", "striped", "checked", "speckled")
# VBench dimensions that run in custom_input mode (own prompts and videos); dcm/eval/vbench_weights.py names
# the checkpoints each one reads, and a test keeps the two lists equal.
VBENCH_DIMENSIONS = ("temporal_flickering", "motion_smoothness", "dynamic_degree", "subject_consistency",
                     "background_consistency", "aesthetic_quality", "imaging_quality", "human_action",
                     "temporal_style", "overall_consistency")

RGB = tuple[int, int, int]


class ConfigError(ValueError):
    """A params file or override that cannot become a valid config. The message is for the user."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapesConfig(Strict):
    train_samples: int = Field(ge=1)
    val_samples: int = Field(ge=0)
    shapes: list[str]
    colours: dict[str, RGB]
    backgrounds: dict[str, RGB]
    directions: list[str]
    size: tuple[float, float]  # object half-extent, fraction of min(height, width)
    speed: tuple[float, float]  # displacement per frame, fraction of min(height, width)
    min_contrast: float = Field(gt=0)  # RGB distance (0..sqrt(3)) between object and background
    supersample: int = Field(ge=1)  # sub-pixel samples per axis for anti-aliased edges
    holdout: list[str]  # "colour shape" pairs kept out of the train split
    textures: list[str]  # object surfaces drawn per clip and named in its caption; [] = plain, no word
    texture_amplitude: float = Field(gt=0, lt=1)  # a texture's dark parts: the colour times (1 − amplitude)
    texture_period: int = Field(ge=2, multiple_of=2)  # pixels per stripe/check cycle (half dark, half light;
    # even, so that the judge's half-period lag is whole)

    @model_validator(mode="after")
    def _check(self) -> ShapesConfig:
        for name in self.textures:
            if name not in TEXTURE_NAMES:
                raise ValueError(f"texture {name!r} is not one of {list(TEXTURE_NAMES)}")
        for name in self.shapes:
            if name not in SHAPE_NAMES:
                raise ValueError(f"shape {name!r} is not one of {list(SHAPE_NAMES)}")
        for name in self.directions:
            if name not in DIRECTION_VECTORS:
                raise ValueError(f"direction {name!r} is not one of {list(DIRECTION_VECTORS)}")
        for pair in self.holdout:
            words = pair.split()
            if len(words) != 2 or words[0] not in self.colours or words[1] not in self.shapes:
                raise ValueError(f"holdout entry {pair!r} must be '<colour> <shape>' from the vocabulary")
        for lo_hi, key in ((self.size, "size"), (self.speed, "speed")):
            if not 0 <= lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"{key} must be [low, high] with 0 <= low <= high")
        return self


class VideosConfig(Strict):
    dir: str
    captions: str  # "sidecar" (<video>.txt beside each file) or a .csv/.jsonl manifest path
    extensions: list[str]
    sample_fps: float | None = Field(gt=0)  # None: take every `frame_stride`-th frame instead
    frame_stride: int = Field(ge=1)
    clips_per_video: int = Field(ge=0)  # 0: as many consecutive clips as the video holds
    val_fraction: float = Field(ge=0, le=1)
    max_skip_fraction: float = Field(ge=0, le=1)
    max_side: int = Field(ge=1)  # larger decoded frames are refused as absurd


class DataConfig(Strict):
    source: Literal["shapes", "videos"]
    frames: int = Field(ge=2)
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    fps: float = Field(gt=0)
    shapes: ShapesConfig
    videos: VideosConfig

    @model_validator(mode="after")
    def _fits_in_frame(self) -> DataConfig:
        # The generator keeps the whole object in view for the whole clip; refuse settings where
        # that is impossible instead of silently clipping the motion. Real footage has no such constraint.
        if self.source != "shapes":
            return self
        travel = (self.frames - 1) * self.shapes.speed[1] + 2 * self.shapes.size[1]
        if travel > 1:
            raise ValueError(
                f"an object of size {self.shapes.size[1]} moving {self.shapes.speed[1]} per frame "
                f"for {self.frames} frames leaves the frame; lower data.shapes.speed or data.shapes.size"
            )
        return self


class ShardConfig(Strict):
    dir: str
    samples_per_shard: int = Field(ge=1)  # shapes: clips per shard
    videos_per_shard: int = Field(ge=1)  # real videos: input files per shard
    workers: int = Field(ge=1)
    engine: Literal["threads", "dask"]  # Prefect task runner: a thread pool, or a local Dask cluster of processes
    png_compression: int = Field(ge=0, le=9)


class JudgeConfig(Strict):
    border: float = Field(gt=0, lt=0.5)  # border band (fraction of min side) that estimates the background
    background_temperature: float = Field(gt=0)
    background_spread: tuple[float, float]  # median border deviation: full score ≤ first, zero ≥ second
    foreground_threshold: float = Field(gt=0)  # RGB distance from background that seeds the object
    colour_temperature: float = Field(gt=0)
    shape_temperature: float = Field(gt=0)
    object_area: tuple[float, float]  # plausible object area, fraction of the frame
    object_spread: tuple[float, float]  # colour deviation inside the object: a solid object is flat
    extra_object_ratio: float = Field(gt=0)  # a second blob larger than this × the first is a second object
    still_speed: float = Field(ge=0)  # per-frame travel (fraction of min side) that still counts as still
    moving_speed: float = Field(gt=0)  # per-frame travel that fully counts as moving
    direction_degrees: tuple[float, float]  # full score within the first angle, zero beyond the second
    area_variation: tuple[float, float]  # coefficient of variation of the object's area across frames
    colour_drift: tuple[float, float]  # largest per-frame deviation from the clip's object colour
    path_jitter: tuple[float, float]  # RMS distance of centroids from a straight constant-speed path
    texture_strength: tuple[float, float]  # std of the object's shading: plain at or below the first,
    # fully textured at or above the second (textured profile only)
    texture_temperature: float = Field(gt=0)  # softmax over squared distances of the shading's correlations
    lit_quantile: float = Field(ge=0, lt=1)  # a textured object's colour: the median of its pixels above this
    # brightness quantile (its lit parts)

    @model_validator(mode="after")
    def _ramps(self) -> JudgeConfig:
        for key in ("background_spread", "object_spread", "direction_degrees", "area_variation", "colour_drift",
                    "path_jitter", "texture_strength"):
            low, high = getattr(self, key)
            if not low < high:
                raise ValueError(f"{key} must be [low, high] with low < high, got {[low, high]}")
        return self


class ScheduleConfig(Strict):
    train_sigmas: int = Field(ge=2)  # the 1000-sigma training grid
    euler_nodes: int = Field(ge=1)  # Euler sub-grid the teacher solves on (every train_sigmas/euler_nodes-th)
    shift: float = Field(gt=0)  # s' = shift·s / (1 + (shift − 1)·s)

    @model_validator(mode="after")
    def _divides(self) -> ScheduleConfig:
        if self.train_sigmas % self.euler_nodes:
            raise ValueError(f"train_sigmas ({self.train_sigmas}) must be a multiple of euler_nodes ({self.euler_nodes})")
        return self


class TrainConfig(Strict):
    """The shared training loop's knobs (teacher pretraining now; distillation stages later)."""

    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    betas: tuple[float, float]
    weight_decay: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    decay: Literal["none", "cosine"]  # after warm-up: constant, or a half cosine down to 0 at `steps`
    grad_clip: float = Field(gt=0)
    ema_decay: float = Field(ge=0, lt=1)
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    log_every: int = Field(ge=1)
    shuffle_buffer: int = Field(ge=0)
    prefetch_batches: int = Field(ge=1)  # batches assembled ahead of the step
    prefetch: Literal["auto", "thread", "process"]  # auto: a process on CUDA, a thread on CPU
    time_limit_s: float | None = Field(gt=0)  # checkpoint and stop after this long; a re-run continues
    device: str  # "auto" (cuda when present), "cpu", "cuda", "cuda:1", ...
    precision: Literal["fp32", "bf16"]  # bf16 = autocast on CUDA; weights and optimiser stay fp32
    compile: Literal["none", "blocks", "all"]  # blocks: torch.compile each repeated transformer block of the trained
    # model in place; all: of the frozen models the step runs too (the distillation stages' teacher)
    gradient_checkpointing: bool  # recompute block activations in backward: memory for time (large models)
    micro_batch: int = Field(ge=0)  # samples per process per forward/backward; 0: the process's whole share
    frozen_dtype: Literal["float32", "bfloat16", "float16"]  # storage of frozen models (teacher, frozen experts)


class ToyModelConfig(Strict):
    """WanTransformer3DModel arguments for the toy teacher (the same class as Wan2.1, tiny)."""

    patch_size: tuple[int, int, int]
    num_attention_heads: int = Field(ge=1)
    attention_head_dim: int = Field(ge=2)
    num_layers: int = Field(ge=1)
    ffn_dim: int = Field(ge=1)
    freq_dim: int = Field(ge=2)
    qk_norm: str | None
    cross_attn_norm: bool


class ToyTextConfig(Strict):
    dim: int = Field(ge=2)  # width of the word-hash embeddings (= the transformer's text_dim)
    max_tokens: int = Field(ge=1)
    position_scale: float = Field(ge=0)  # weight of the sinusoidal word-position code


class ToyTeacherConfig(Strict):
    init: Literal["pretrained", "scratch", "finetune"]  # pretrained: install the packed teacher in `pretrained`;
    # scratch: train one; finetune: train one starting from `pretrained`'s weights (a new domain, e.g. textures)
    pretrained: str = Field(min_length=1)  # a packed teacher folder (weights/README.md); a DVC dependency either way
    model: ToyModelConfig
    text: ToyTextConfig
    caption_dropout: float = Field(ge=0, lt=1)  # so that the teacher learns the unconditional velocity for CFG
    prediction: Literal["x0", "velocity"]  # what the network outputs; callers always get a velocity
    min_sigma: float = Field(gt=0, le=1)  # floor of s in v = (x_s − x̂0)/s when prediction is x0
    logit_mean: float
    logit_std: float = Field(gt=0)

    @property
    def trains(self) -> bool:
        """Whether the teacher stage trains (from scratch or from the packed teacher) rather than installs."""
        return self.init != "pretrained"
    train: TrainConfig


class SamplingConfig(Strict):
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    eval_prompts: int = Field(ge=0)  # held-out prompts the teacher stage generates and scores (0: none)
    guidance_scale: float = Field(ge=0)  # real CFG weight (embedded guidance for guidance-distilled families)
    fps: float = Field(gt=0)
    mp4_crf: int = Field(ge=0, le=51)


class TeacherConfig(Strict):
    family: Literal["toy", "wan", "hunyuan", "cogvideox"]
    path: str | None  # real families: local diffusers folder; toy: None (trained into out_dir/model)
    max_text_tokens: int = Field(ge=1)  # real families' prompt length (Wan 512); the toy uses toy.text
    negative_prompt: str  # the unconditional prompt of CFG ("" as in the reference code)
    out_dir: str
    checkpoint_dir: str
    toy: ToyTeacherConfig
    sampling: SamplingConfig


class PrecomputeConfig(Strict):
    dir: str
    batch_size: int = Field(ge=1)
    dtype: Literal["float32", "float16", "bfloat16"]  # storage type of latents, embeddings, trajectories
    trajectories_per_shard: int | None = Field(ge=0)  # samples per shard with a teacher solve; None: all
    trajectory_nodes: Literal["all"] | list[int]  # Euler nodes whose states are stored
    device: str
    wait_for_ranks_s: float = Field(gt=0)  # how long rank 0 waits for the other ranks' shards


class LoraConfig(Strict):
    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    targets: list[str] = Field(min_length=1)  # module names inside every attention layer


class DiscriminatorConfig(Strict):
    """Heads on the frozen teacher's tapped blocks (DESIGN.md §2, stage 2)."""

    tap_every: int = Field(ge=1)  # read every k-th block's hidden states
    hidden: int = Field(ge=1)  # 1×1-conv width (reference 1024)
    groups: int = Field(ge=1)  # GroupNorm groups; must divide `hidden`
    residual: bool  # the second conv block is added onto its input (reference: yes)
    kernel: int = Field(ge=1)  # tokens across the first conv (reference 1: each token alone; 3: with its 8
    # neighbours, so a pattern repeated on every patch, the patch grid showing through, is in what it judges)
    real: Literal["target", "data"]  # what the heads see as real: the consistency target (the reference) or
    # the training clip itself at the same segment edge
    noise_window: Literal["detail", "phase"]  # where the re-noise sigma of what the heads judge is drawn, above each
    # sample's edge: up to κ, the detail segment's top | up to the top of the phase that jumps to that edge (PCM's
    # reference); the two are the same with one detail phase
    leaky_slope: float = Field(ge=0, lt=1)  # LeakyReLU's negative slope (reference: torch's default 0.01)
    chance_accuracy: float = Field(ge=0.5, le=1)  # real-vs-fake accuracy at or below this over the last
    # logging window: the stage reports its discriminator at chance (it taught the generator nothing)
    lr: float = Field(gt=0)
    betas: tuple[float, float]
    weight_decay: float = Field(ge=0)
    updates_per_step: int = Field(ge=1)  # the heads' optimiser steps on each generator step's features (reference: 1)
    warmup_steps: int = Field(ge=0)  # detail steps at the start whose hinge term does not reach the student while
    # the heads train (feature matching does): the critic leads before it steers (0: the reference, from step 1)

    @model_validator(mode="after")
    def _heads_can_be_built(self) -> DiscriminatorConfig:
        if self.hidden % self.groups:
            raise ValueError(f"discriminator.groups={self.groups} must divide discriminator.hidden={self.hidden}")
        if self.kernel % 2 == 0:
            raise ValueError(f"discriminator.kernel={self.kernel} must be odd (1, 3, 5, ...): an even kernel "
                             "shifts each token's logit off its token")
        return self


class DistillConfig(Strict):
    """Consistency distillation: DCM's two stages and the LCM/PCM baselines (DESIGN.md §2)."""

    kappa: int = Field(ge=0)  # split node: nodes above it are the semantic expert's, at or below the detail expert's
    seed: int | None  # the students' random draws (data order, nodes, noise, LoRA/discriminator init); null: `seed`
    pcm_phases: int = Field(ge=2)  # PCM baseline: phases, each node maps to its phase's lower edge
    detail_phases: int = Field(ge=1)  # DCM/single: phases of the detail segment (1: the paper's one jump to the end)
    teacher_mode: Literal["online", "trajectory"]  # run the teacher per step, or read precomputed ODE solves
    guidance_scale: float = Field(ge=0)  # the teacher's CFG (or embedded guidance) weight in the targets
    loss: Literal["pseudo_huber", "l2"]
    huber_c: float = Field(gt=0)
    tc_weight: float = Field(ge=0)  # temporal coherence loss weight of the semantic stage (0: off)
    tc_stride: int = Field(ge=1)  # latent frames between compared frames
    target_ema_decay: float = Field(ge=0, lt=1)  # target network = EMA of the student; 0: the student, no grad
    semantic_weights: Literal["full", "lora"]  # stage 1: fine-tune every weight, or a LoRA merged afterwards
    detail_expert: Literal["lora", "full"]  # lora: adapter + copied layers (DCM); full: a second full expert
    adversarial: Literal["gan_fm", "none"]  # stage 2's hinge GAN + feature matching
    adv_weight: float = Field(ge=0)
    generator_weight: float = Field(ge=0)
    fm_weight: float = Field(ge=0)
    lora: LoraConfig
    discriminator: DiscriminatorConfig
    sample_every: int = Field(ge=0)  # steps between logged sample clips (0: only at the end)
    sample_prompts: int = Field(ge=1)
    sample_steps: int = Field(ge=1)  # student steps of the logged samples
    checkpoint_dir: str  # <dir>/<method>/step-N
    out_dir: str  # <dir>/<method>: the exported DCMPipeline folder
    semantic: TrainConfig
    detail: TrainConfig
    baseline: TrainConfig  # lcm, pcm and single
    baselines: list[Literal["lcm", "pcm", "single"]]  # trained by the distill_baselines stage

    @model_validator(mode="after")
    def _gan_switches_on(self) -> DistillConfig:
        if self.adversarial != "none" and self.discriminator.warmup_steps >= self.detail.steps:
            raise ValueError(f"distill.discriminator.warmup_steps ({self.discriminator.warmup_steps}) is not below "
                             f"distill.detail.steps ({self.detail.steps}): the GAN term would never reach the detail "
                             "expert. Lower the warm-up, or set distill.adversarial: none")
        return self


class VBenchConfig(Strict):
    """The real vbench package in custom_input mode; weights come from VBENCH_CACHE_DIR (never downloaded)."""

    dimensions: list[str]  # temporal_flickering needs no weights; see dcm/eval/vbench_weights.py for the rest
    min_side: int = Field(ge=1)  # clips are upscaled (nearest) until the shorter side reaches this

    @model_validator(mode="after")
    def _check(self) -> VBenchConfig:
        unknown = [d for d in self.dimensions if d not in VBENCH_DIMENSIONS]
        if unknown:
            raise ValueError(f"vbench dimensions {unknown} are not available in custom_input mode; "
                             f"choose from {sorted(VBENCH_DIMENSIONS)}")
        return self


class EvaluateConfig(Strict):
    """Stage `evaluate`: teacher vs DCM vs baselines on the same prompts, seeds and initial noise."""

    out_dir: str
    prompt_source: Literal["heldout", "file", "vbench"]  # heldout: val shards (the judge needs them)
    prompt_file: str = Field(min_length=1)  # prompt_source: file — one prompt per line; dvc.yaml tracks its content
    prompts: int = Field(ge=1)  # how many prompts (heldout: unseen colour+shape pairs first)
    student_steps: list[int] = Field(min_length=1)  # step counts every student is evaluated at
    batch_size: int = Field(ge=1)
    latency_repeats: int = Field(ge=1)  # timed generations per model; the median is reported
    device: str
    grid_prompts: int = Field(ge=1)  # rows of the sample grid
    wait_for_ranks_s: float = Field(gt=0)  # several workers: how long one waits for a row another computes
    pcm_reference_sampler: bool  # PCM students also at the reference's step placement (rows pcm_reference_N)
    vbench: VBenchConfig


class GateMetric(Strict):
    metric: str  # a key of the evaluation metrics, e.g. dcm_4.judge_overall
    higher_is_better: bool
    tolerance: float = Field(ge=0)  # how much worse than the champion the challenger may be


class Gate(Strict):
    primary: GateMetric  # must not be worse than the champion's by more than its tolerance
    guards: list[GateMetric]  # likewise, each one


class Gates(Strict):
    """The gate per data.source: what "better" can mean depends on what the evaluation can measure."""

    shapes: Gate  # ground truth exists: the judge
    videos: Gate  # none: fidelity to the teacher from the same noise, guarded against flicker and saturation


class RegistryConfig(Strict):
    """MLflow registry: every evaluated student becomes a version aliased `challenger`; `champion` moves
    only when the challenger passes the gate against the current champion."""

    model_prefix: str  # registered model name: <prefix>-<family>
    out: str  # the register stage's record (name, version, run) for DVC
    reevaluation_dir: str  # the champion re-evaluation's download, metrics and report
    gates: Gates
    speedup_metric: str
    min_speedup: float = Field(ge=0)


class ServingConfig(Strict):
    """Limits of the served model, stored with each registered version (MLflow model_config); a request
    beyond them gets HTTP 400 naming the limit, and the server keeps serving."""

    max_rows: int = Field(ge=1)  # clips per request
    max_prompt_chars: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    max_frames: int = Field(ge=1)
    max_pixels: int = Field(ge=1)  # height × width of one frame
    default_steps: int = Field(ge=1)
    fps: float = Field(gt=0)  # of the returned mp4
    mp4_crf: int = Field(ge=0, le=51)

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        if self.default_steps > self.max_steps:
            raise ValueError(f"serving.default_steps ({self.default_steps}) exceeds serving.max_steps ({self.max_steps})")
        return self


class TrackingConfig(Strict):
    uri: str  # MLFLOW_TRACKING_URI in the environment wins, as MLflow users expect
    probe_timeout_s: float = Field(gt=0)  # an MLflow/Prefect server silent this long fails the command
    artifacts: str
    experiment: str


class DemoConfig(Strict):
    host: str = Field(min_length=1)  # 127.0.0.1: this machine only; 0.0.0.0 to share it on the network
    port: int = Field(ge=1, le=65535)


class PipelineConfig(Strict):
    retries: int = Field(ge=0)  # each stage's task in the pipeline flow: re-runs after a crash (resuming its checkpoints)
    retry_delay_s: float = Field(ge=0)


class DistributedConfig(Strict):
    """Worker processes of the training stages (torchrun's elastic launcher; dcm/ops/launch.py)."""

    nproc_per_node: int = Field(ge=1)
    nnodes: int = Field(ge=1)
    rdzv_endpoint: str  # host:port of the c10d rendezvous on the first machine; read only when nnodes > 1
    max_restarts: int = Field(ge=0)

    @model_validator(mode="after")
    def _check(self) -> DistributedConfig:
        if self.nnodes > 1 and not re.fullmatch(r"[^:\s]+:\d+", self.rdzv_endpoint):
            raise ValueError(f"distributed.rdzv_endpoint must be host:port of the first machine when nnodes > 1 "
                             f"(got {self.rdzv_endpoint!r})")
        return self


class DCMConfig(Strict):
    profile: str  # a name from `profiles`, applied on top of this file ("default": nothing)
    profiles: dict[str, dict[str, Any]]  # name → {"dotted.key": value}; same keys as -S overrides
    seed: int
    data: DataConfig
    shard: ShardConfig
    judge: JudgeConfig
    schedule: ScheduleConfig
    teacher: TeacherConfig
    precompute: PrecomputeConfig
    distill: DistillConfig
    evaluate: EvaluateConfig
    registry: RegistryConfig
    serving: ServingConfig
    tracking: TrackingConfig
    distributed: DistributedConfig
    pipeline: PipelineConfig
    demo: DemoConfig

    @model_validator(mode="after")
    def _cross_checks(self) -> DCMConfig:
        if self.teacher.family == "toy" and self.teacher.path is not None:
            raise ValueError("teacher.path must be null for the toy family (the pipeline trains it)")
        if self.teacher.family != "toy" and not self.teacher.path:
            raise ValueError(f"teacher.path must name the local diffusers folder of the {self.teacher.family} teacher")
        nodes = self.precompute.trajectory_nodes
        if nodes != "all" and not all(0 <= n < self.schedule.euler_nodes for n in nodes):
            raise ValueError(f"precompute.trajectory_nodes must lie in [0, {self.schedule.euler_nodes})")
        if self.teacher.sampling.steps > self.schedule.euler_nodes:
            raise ValueError(f"teacher.sampling.steps ({self.teacher.sampling.steps}) exceeds schedule.euler_nodes")
        if not 0 <= self.distill.kappa < self.schedule.euler_nodes - 1:
            raise ValueError(f"distill.kappa ({self.distill.kappa}) must lie in [0, {self.schedule.euler_nodes - 1}): "
                             "both experts need at least one node")
        if self.distill.pcm_phases > self.schedule.euler_nodes:
            raise ValueError(f"distill.pcm_phases ({self.distill.pcm_phases}) exceeds schedule.euler_nodes")
        if self.distill.detail_phases > self.distill.kappa + 1:
            raise ValueError(f"distill.detail_phases ({self.distill.detail_phases}) exceeds the detail segment's "
                             f"{self.distill.kappa + 1} nodes (distill.kappa + 1)")
        self._check_student_steps()
        return self

    def _check_student_steps(self) -> None:
        """Every configured DCM step count must fit the experts' segments (checked before any work)."""
        edges = method_edges("dcm", self.schedule, self.distill)
        for key, counts in (("evaluate.student_steps", self.evaluate.student_steps),
                            ("distill.sample_steps", [self.distill.sample_steps]),
                            ("serving.default_steps", [self.serving.default_steps])):
            for steps in counts:
                try:
                    inference_sigmas(self.schedule, steps, edges)
                except ValueError as error:
                    raise ValueError(f"{key}: {error}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` → ("a.b.c", value), the value read as YAML like `dvc exp run -S` does."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def apply_override(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: no such section (override {key}=...)")
        node = child
    if parts[-1] not in node:
        raise ConfigError(f"{key}: unknown key (override {key}=...)")
    node[parts[-1]] = value


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: {path}: unknown key; remove it or check its spelling")
        elif item["type"] == "missing":
            lines.append(f"{source}: {path}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            if not path:  # a cross-field check: its message names the keys; the input is the whole file
                lines.append(f"{source}: {message}")
            elif isinstance(item.get("input"), dict):  # a section-level check: same, for one section
                lines.append(f"{source}: {path}: {message}")
            else:
                lines.append(f"{source}: {path}: {message} (got {item.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(tree: dict, source: str = "params") -> DCMConfig:
    try:
        return DCMConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> DCMConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root or pass --params")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}".replace("\n", " ")) from None
    tree = copy.deepcopy(tree)
    parsed = [parse_override(text) for text in overrides or []]
    # The profile is chosen by the file or an override, then applied before the other overrides so
    # that `-S key=value` always has the last word.
    profile = next((value for key, value in reversed(parsed) if key == "profile"), tree.get("profile"))
    if profile not in (None, "default"):
        profiles = tree.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"profile: unknown profile {profile!r}; params.yaml defines {sorted(profiles)}")
        for key, value in (profiles[profile] or {}).items():
            try:
                apply_override(tree, key, value)
            except ConfigError as error:
                raise ConfigError(f"profiles.{profile}: {error}") from None
    for key, value in parsed:
        apply_override(tree, key, value)
    return config_from_dict(tree, str(path))


def config_to_dict(config: BaseModel) -> dict:
    return config.model_dump(mode="json")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: the form MLflow params and DVC overrides use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
