"""Parameters, the product's error type and the command-line wrapper: every stage reads params.yaml
through here, and every user mistake leaves a stage as one sentence.

The settings several stages share are typed once: `AudioConfig` (what the audio data is: rate,
scale, block size, layout), validated once and compared as a whole, and `TrackingConfig` (where
MLflow is). Each stage's own section is read by that stage's config class.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

log = logging.getLogger("rawtune")

PARAMS_FILE = "params.yaml"


class UserError(Exception):
    """A mistake the user can fix (bad params, no usable audio); its message is one sentence."""


# --- params -----------------------------------------------------------------------------------

def load_params(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Parameter file {path} not found; run from the project root.")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"Parameter file {path} is not valid YAML ({err.__class__.__name__}).") from err
    return params


def param(params: dict, key: str, kind: type | tuple = object, choices: Iterable | None = None,
          minimum: float | None = None, above: float | None = None,
          below: float | None = None) -> Any:
    """Return `params[key]` for a dotted key ("fft_blocks.block_size"), checked against its type,
    allowed values and bounds (`minimum` inclusive, `above`/`below` exclusive), with one sentence
    naming the key when it is wrong."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"params.yaml has no value for '{key}'.")
        node = node[part]
    if kind is int and isinstance(node, bool) or not isinstance(node, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserError(f"params.yaml '{key}' must be {names}, got {node!r}.")
    if choices is not None and node not in choices:
        raise UserError(f"params.yaml '{key}' is {node!r}; allowed values are "
                        f"{', '.join(repr(c) for c in choices)}.")
    if minimum is not None and node < minimum:
        raise UserError(f"params.yaml '{key}' must be at least {minimum}, got {node!r}.")
    if above is not None and node <= above:
        raise UserError(f"params.yaml '{key}' must be above {above}, got {node!r}.")
    if below is not None and node >= below:
        raise UserError(f"params.yaml '{key}' must be below {below}, got {node!r}.")
    return node


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: fewer than the machine's under
    `taskset` or a container's CPU set): what a `0` for workers or threads stands for."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                              # not on Linux
        return os.cpu_count() or 1


def section(params: dict, name: str, fields_of: type | None = None) -> Callable[..., Any]:
    """`param` for the keys of one params.yaml section: section(params, "train")("epochs", int).
    With `fields_of`, a dataclass whose fields are the section's keys, every missing key is named
    in one sentence at once (a params.yaml from before several keys existed), not one per run."""
    node = params.get(name) if isinstance(params, dict) else None
    if fields_of is not None and isinstance(node, dict):
        missing = [f"'{name}.{f.name}'" for f in fields(fields_of) if f.name not in node]
        if len(missing) > 1:
            raise UserError(f"params.yaml has no values for {', '.join(missing[:-1])} and "
                            f"{missing[-1]}; add them (README, \"Parameters that matter\", gives "
                            "each one's default).")
    return lambda key, *args, **checks: param(params, f"{name}.{key}", *args, **checks)


# --- the settings that travel with the data and the model --------------------------------------

LAYOUTS = ("rfft", "full", "frames")
SCALES = (32768, 32767)
AUDIO_PARAMS = {  # AudioConfig field: (params.yaml key, type, checks), the one reader of each
    "sample_rate": ("decode.sample_rate", int, dict(minimum=1000)),
    "scale": ("wav_to_npy.scale", (int, float), dict(choices=SCALES)),
    "block_size": ("fft_blocks.block_size", int, dict(minimum=2)),
    "layout": ("fft_blocks.fft", str, dict(choices=LAYOUTS)),
    "hop": ("fft_blocks.hop", int, dict(minimum=1)),
}
CODEBOOK_KEY = "codebook"   # the identity of the codebook a model's tokens index (not a param)


def audio_setting(params: dict, name: str):
    """One audio setting ("sample_rate", "scale", "block_size", "layout", "hop"), checked the one way it
    is checked everywhere; for a stage that uses only some of them (a bad value of another then
    stops the stage that uses it, after the earlier stages' work)."""
    key, kind, checks = AUDIO_PARAMS[name]
    value = param(params, key, kind, **checks)
    return int(value) if name == "scale" else value


@dataclass(frozen=True)
class AudioConfig:
    """What the audio data is: every array of the pipeline, and every model trained on it, holds
    blocks of `block_size` samples at `sample_rate` Hz, scaled by 1/`scale`, in `layout`. Written
    beside the tensors and saved with every model; data and model must agree before any audio is
    written. The keys are params.yaml's, so a mismatch names what to change.

    `hop` is the distance between frame starts of the `frames` layout (for the block layouts it is
    the block size: blocks do not overlap). `codebook` is the identity (a digest) of the codebook
    whose codes a `codebook` model predicts, "" for models of frames or blocks."""
    sample_rate: int        # decode.sample_rate
    scale: int              # wav_to_npy.scale
    block_size: int         # fft_blocks.block_size: samples per block, or per frame (n_fft)
    layout: str             # fft_blocks.fft
    hop: int = 0            # fft_blocks.hop (frames only)
    codebook: str = ""      # the codebook stage's digest (codebook models only)

    def __post_init__(self):
        if self.layout != "frames" or not self.hop:
            object.__setattr__(self, "hop", self.block_size)

    @classmethod
    def from_params(cls, params: dict) -> "AudioConfig":
        audio = cls(**{name: audio_setting(params, name) for name in AUDIO_PARAMS})
        if audio.layout == "frames" and audio.block_size % audio.hop:
            raise UserError(f"params.yaml 'fft_blocks.hop' ({audio.hop}) must divide "
                            f"'fft_blocks.block_size' ({audio.block_size}) for the frames layout.")
        return audio

    @classmethod
    def from_dict(cls, d: dict) -> "AudioConfig":
        """From `as_dict`'s output; settings saved before `hop` and `codebook` existed read as
        the block layouts' (no overlap, no codebook)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d or f.default is
                      dataclasses.MISSING})

    def with_codebook(self, digest: str) -> "AudioConfig":
        return dataclasses.replace(self, codebook=digest)

    def as_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: "AudioConfig") -> list[str]:
        """'key: ours vs theirs' for every setting that differs, in params.yaml's names."""
        key = lambda name: AUDIO_PARAMS[name][0] if name in AUDIO_PARAMS else CODEBOOK_KEY  # noqa
        frames = "frames" in (self.layout, other.layout)      # else hop is the block size
        return [f"{key(f.name)} {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)
                and (f.name != "hop" or frames)]


def check_same_audio(model: AudioConfig, data: AudioConfig, model_name: str, data_name: str) -> None:
    """Refuse a model made for other audio than the data, in one sentence naming each key."""
    diff = model.differences(data)
    if diff:
        raise UserError(f"The model '{model_name}' was trained on other audio settings than the "
                        f"data in '{data_name}' (model vs data: {'; '.join(diff)}); retrain with "
                        "`dvc repro train` or use a model made for these settings.")


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow keeps runs and models. `MLFLOW_TRACKING_URI` wins over tracking.uri."""
    uri: str
    experiment: str
    model_name: str
    timeout_s: float

    @classmethod
    def from_params(cls, params: dict) -> "TrackingConfig":
        uri = os.environ.get("MLFLOW_TRACKING_URI") or param(params, "tracking.uri", str)
        return cls(uri=uri, experiment=param(params, "tracking.experiment", str),
                   model_name=param(params, "tracking.model_name", str),
                   timeout_s=float(param(params, "tracking.timeout_s", (int, float), minimum=1)))

    def rooted(self, project: str | Path) -> "TrackingConfig":
        """The same store with a relative sqlite path taken from `project`, not the cwd."""
        prefix = "sqlite:///"
        if self.uri.startswith(prefix) and not Path(self.uri[len(prefix):]).is_absolute():
            uri = f"{prefix}{Path(project).resolve() / self.uri[len(prefix):]}"
            return TrackingConfig(uri, self.experiment, self.model_name, self.timeout_s)
        return self


def tensors_name(params: dict) -> str:
    """tensors.name: the prefix of every file the tensors stage writes."""
    return param(params, "tensors.name", str)


# --- command line -----------------------------------------------------------------------------

def cli(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse args, run `main`, and turn a UserError into its sentence and exit status 1."""
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("RAWTUNE_LOG", "INFO"),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; finished outputs are kept and the next run continues.",
              file=sys.stderr)
        sys.exit(130)


def stage_parser(description: str) -> argparse.ArgumentParser:
    spec = getattr(sys.modules["__main__"], "__spec__", None)   # run as `python -m stages.x`
    parser = argparse.ArgumentParser(prog=f"python -m {spec.name}" if spec else None,
                                     description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=PARAMS_FILE,
                        help="parameter file to read (default: %(default)s)")
    return parser
