"""The `tensors` stage's outputs by name, for the stage that writes them and every stage that
reads them: `<name>_x.npy`, `_y.npy`, `_val_x.npy`, `_val_y.npy`, `_mean.npy`, `_var.npy`,
`_index.parquet`, and `_audio.json`, the audio settings the tensors were made with (the same
settings every model trained on them carries).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages import arrays
from stages.config import AudioConfig, UserError, tensors_name
from stages.files import read_json

REQUIRED = ("x", "y", "mean", "var")


@dataclass(frozen=True)
class Tensors:
    """The paths of the `tensors` stage's outputs for one dataset name."""
    folder: Path
    name: str

    @classmethod
    def from_params(cls, folder: str | Path, params: dict) -> "Tensors":
        return cls(Path(folder), tensors_name(params))

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}_{suffix}.npy"

    @property
    def index_path(self) -> Path:
        return self.folder / f"{self.name}_index.parquet"

    @property
    def audio_path(self) -> Path:
        return self.folder / f"{self.name}_audio.json"

    def check(self) -> None:
        for path in [self.path(suffix) for suffix in REQUIRED] + [self.audio_path]:
            if not path.is_file():
                raise UserError(f"Training tensor file '{path}' not found; run `dvc repro "
                                "tensors` first.")

    def audio(self) -> AudioConfig:
        """The audio settings the tensors were made with."""
        if not self.audio_path.is_file():
            raise UserError(f"'{self.audio_path}' not found; run `dvc repro tensors` first.")
        settings = read_json(self.audio_path)
        try:
            return AudioConfig.from_dict(settings)
        except (TypeError, KeyError) as err:
            raise UserError(f"'{self.audio_path}' does not hold the data's audio settings; run "
                            "`dvc repro tensors` again.") from err

    def n_sequences(self, split: str = "") -> int:
        path = self.path(f"{split}x" if split else "x")
        return arrays.shape_of(path)[0] if path.is_file() else 0

    def shape(self) -> tuple[int, int]:
        """(max_seq_len, n_features)."""
        return tuple(arrays.shape_of(self.path("x"))[1:])
