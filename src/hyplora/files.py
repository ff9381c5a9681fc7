"""File utilities: atomic writes, the path-or-name test, and PNG figures on matplotlib's Agg backend."""

import io
import os
from pathlib import Path

FILE_SUFFIXES = (".json", ".jsonl", ".gguf")


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (UTF-8 text or bytes) to `path` so that a reader, or a killed writer, never leaves half a file.

    The data goes to `.<name>.<pid>.tmp` in the same folder (unique per process), is flushed and
    fsynced, then `os.replace`d onto `path`; the temporary file is removed if any step fails.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(temporary, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as err:  # e.g. a full disk: name the file the caller asked for, not the temporary one
        temporary.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def check_output_dir(path: str | os.PathLike, option: str = "--output-dir") -> None:
    """Raise `InputError` unless `path` is a folder, or can become one, that this process can write.

    Checked before any computation: the nearest existing folder on the way to `path` must accept a new file.
    """
    import tempfile

    from hyplora.errors import InputError

    path = Path(path).expanduser()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        raise InputError(f"{option} {path}: {existing} exists and is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise InputError(f"{option} {path}: cannot write in {existing} ({err.strerror or err})") from None


def looks_like_path(name: str | os.PathLike) -> bool:
    """Whether `name` means a local file or folder rather than a registry name or a Hugging Face id `org/name`.

    True when it exists, starts with `.`, `/` or `~`, holds more than one `/`, or ends in one of `FILE_SUFFIXES`.
    """
    text = str(name)
    slashes = text.replace(os.sep, "/").strip("/").count("/")
    return (
        text.startswith((".", "/", "~", os.sep))
        or slashes > 1
        or text.lower().endswith(FILE_SUFFIXES)
        or Path(text).expanduser().exists()
    )


def pyplot():
    """`matplotlib.pyplot` on the non-interactive Agg backend (PNG files; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out `figure` (`tight_layout`), write it to `path` as a PNG with `write_atomic`, and close it."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(figure)
    write_atomic(path, buffer.getvalue())
    return Path(path)
