"""Resources: the frame decoder (worker processes for one step) and the data root settings."""

from collections.abc import Iterable, Iterator

import dagster as dg
from pydantic import Field, PrivateAttr

from frames_pipeline.decode import DecodeOptions, DecoderPool, VideoJob, VideoOutcome
from frames_pipeline.deployment import configured_mode
from frames_pipeline.storage.manifest import configured_shard_size
from frames_pipeline.storage.store import FramesStore, default_data_root


class FrameDecoderResource(dg.ConfigurableResource):
    """Decoder worker processes, started at a step's first decode and reused for every video of the
    shard; also the input rules (allowed roots, remote input) that the probe applies too."""

    mode: str = Field(
        default_factory=configured_mode,
        description="auto, pynvc, ffmpeg_gpu or ffmpeg_cpu (default: $FRAMES_PIPELINE_MODE or auto)",
    )
    gpu_id: int | None = Field(
        default=None, description="pin every worker to this CUDA device (default: spread over every visible GPU)"
    )
    output_hw: list[int] = Field(default=[27, 48], description="output (height, width)")
    batch_size: int = Field(default=64, description="frames per batch (GPU-to-host copies, resize)")
    workers: int = Field(default=2, description="videos decoded in parallel")
    processes: int | None = Field(
        default=None,
        description=(
            "worker processes carrying them (default: one per video on CPU, one per 7 videos and at least one "
            "per GPU on a GPU; fewer share start-up and a CUDA context)"
        ),
    )
    timeout_s: float = Field(default=600.0, description="per-video time limit in seconds")
    ffmpeg_binary: str | None = Field(default=None, description="ffmpeg for ffmpeg_gpu (default: bundled)")
    allowed_roots: list[str] = Field(
        default=[], description="folders videos must resolve into (symlinks followed); empty: any local file"
    )
    allow_remote: bool = Field(
        default=False, description="let FFmpeg read URLs, playlists and concat scripts (off: local files only)"
    )
    skip_loop_filter: bool = Field(
        default=False,
        description="CPU decodes skip the H.264/HEVC deblocking filter: 15-20% less decoding CPU, slightly "
        "different frames (bench/results/transnet.md); GPU decoders ignore it",
    )

    _pool: DecoderPool | None = PrivateAttr(default=None)
    _in_step: bool = PrivateAttr(default=False)

    def decode_options(self) -> DecodeOptions:
        """The engine's options for this configuration; raises ValueError on a bad mode or size."""
        if len(self.output_hw) != 2:
            raise ValueError(f"output_hw must be [height, width], got {self.output_hw!r}")
        return DecodeOptions(
            output_hw=(self.output_hw[0], self.output_hw[1]),
            mode=self.mode,
            gpu_id=self.gpu_id or 0,
            batch_size=self.batch_size,
            timeout_s=self.timeout_s,
            ffmpeg_binary=self.ffmpeg_binary,
            allow_remote=self.allow_remote,
            allowed_roots=tuple(self.allowed_roots),
            skip_loop_filter=self.skip_loop_filter,
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # The workers start at the first decode: a step that only probes (video_manifest) needs none.
        self._in_step = True

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._in_step = False

    @property
    def effective_mode(self) -> str:
        """What ``mode`` resolves to on this host ("auto" becomes a concrete mode)."""
        return self._started_pool().effective_mode

    def decode(self, jobs: Iterable[VideoJob]) -> Iterator[VideoOutcome]:
        """Decode ``jobs`` in the worker processes; yields outcomes in completion order."""
        return self._started_pool().run(jobs)

    def _started_pool(self) -> DecoderPool:
        if not self._in_step:
            raise RuntimeError("FrameDecoderResource is used outside a step (setup_for_execution did not run)")
        if self._pool is None:
            gpus = None if self.gpu_id is None else [self.gpu_id]
            pool = DecoderPool(self.decode_options(), workers=self.workers, processes=self.processes, gpus=gpus)
            self._pool = pool.start()
        return self._pool


class FramesDataResource(dg.ConfigurableResource):
    """Where manifests and frames live, and how many videos make a shard."""

    data_root: str = Field(
        default_factory=default_data_root,
        description="folder or fsspec URL (s3://bucket/prefix) holding manifests/ and frames/"
        " (default: $FRAMES_PIPELINE_DATA or ./data)",
    )

    @property
    def store(self) -> FramesStore:
        return FramesStore(self.data_root)

    @property
    def shard_size(self) -> int:
        """Videos per shard, ``$FRAMES_PIPELINE_SHARD_SIZE`` (default 100). Not resource config: a run
        configured with another size would read other rows under the same shard keys, and the CLI,
        which reads the same variable, would list other shards than the code location has."""
        return configured_shard_size()


frames_data = FramesDataResource()


@dg.definitions
def resources() -> dg.Definitions:
    """The code location's resources, bound by the names the assets, sensor and schedule ask for."""
    return dg.Definitions(resources={"frame_decoder": FrameDecoderResource(), "frames_data": frames_data})
