"""Where pretrained weights are looked for (:mod:`fader_kit.maskers.weights`): checkpoint files and folders,
``$FADER_KIT_WEIGHTS``, the Hugging Face hub cache and the hub; reading a checkpoint safely; and
the one loud error (:class:`MissingWeightsError`) naming what was looked for and how to provide it."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

import torch
from torch import nn

from fader_kit.errors import UnsafeFileError, UserError

ENV_FOLDER = "FADER_KIT_WEIGHTS"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
RANDOM_INIT = "random-init"
HUB_PROBE_TIMEOUT_S = 3.0


class MissingWeightsError(UserError, RuntimeError):
    """Pretrained weights were asked for and could not be found (or read) anywhere.

    ``model`` is the model the weights were for; ``looked_for`` the places searched.
    """

    def __init__(self, message: str, *, model: str = "", looked_for: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.model = model
        self.looked_for = list(looked_for)


# -- local files ---------------------------------------------------------------------------------
def candidate_files(folder: Path, name: str, extra_names: Iterable[str] = ()) -> list[Path]:
    """The file names looked for in a weights folder for model ``name``.

    ``name``, ``name`` with ``/`` replaced by ``_`` and, for timm ``arch.tag`` names, the plain
    ``arch``, each with every checkpoint suffix; then ``extra_names`` verbatim (e.g. the file
    name of the original release).
    """
    stems = [name, name.replace("/", "_"), name.replace("/", ".")]
    if "." in name and "/" not in name:  # timm "arch.tag": also accept plain "arch"
        stems.append(name.split(".", 1)[0])
    files = [folder / f"{stem}{suffix}" for stem in dict.fromkeys(stems) for suffix in CHECKPOINT_SUFFIXES]
    files += [folder / extra for extra in extra_names]
    return list(dict.fromkeys(files))


def find_local_weights(
    name: str,
    weights: str | Path | None = None,
    *,
    extra_names: Iterable[str] = (),
    folder_names: Iterable[str] = (),
) -> Path | None:
    """The local checkpoint for ``name``: ``weights`` (file or folder), else ``$FADER_KIT_WEIGHTS``.

    ``folder_names`` are generic file names (``model.safetensors``...) accepted only inside a
    folder passed explicitly as ``weights`` -- such a folder is dedicated to one model (a
    downloaded hub snapshot), whereas the shared ``FADER_KIT_WEIGHTS`` folder is not.
    A ``weights`` path that does not exist, or a folder without a matching file, raises
    :class:`MissingWeightsError` at once: an explicit path that is wrong is a mistake to report,
    not a reason to look elsewhere.
    """
    extra_names = list(extra_names)
    if weights is not None and str(weights) != "":
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            looked = candidate_files(path, name, [*extra_names, *folder_names])
            found = next((p for p in looked if p.is_file()), None)
            if found is None:
                raise MissingWeightsError(
                    f"weights folder {path} has no checkpoint for {name!r}; looked for: "
                    + ", ".join(p.name for p in looked),
                    model=name,
                    looked_for=[str(p) for p in looked],
                )
            return found
        raise MissingWeightsError(
            f"weights path does not exist: {path} (for model {name!r})", model=name, looked_for=[str(path)]
        )
    env = os.environ.get(ENV_FOLDER)
    if env:
        return next((p for p in candidate_files(Path(env).expanduser(), name, extra_names) if p.is_file()), None)
    return None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (unwrapping ``state_dict``/``model``)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        from fader_kit.util.safe_load import torch_load_safe

        obj = torch_load_safe(path, "checkpoint")
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise MissingWeightsError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise MissingWeightsError(f"checkpoint {path} holds {type(obj).__name__}, not a state dict")
    return obj


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` strictly, turning key/shape mismatches into one readable error."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:4]
        raise MissingWeightsError(
            f"checkpoint {source} does not fit {type(model).__name__}: " + " | ".join(first)
        ) from exc


# -- the hub -------------------------------------------------------------------------------------
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds.

    Run in a daemon thread because name resolution ignores socket timeouts; a machine without
    network answers ``False`` in at most ``timeout`` seconds.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result and result[0])


def resolve_offline(offline: bool | None) -> tuple[bool, str]:
    """Whether to stay off the network, and why (for the error message).

    ``None`` means: offline when ``HF_HUB_OFFLINE`` is set, or when the hub does not answer.
    """
    if offline is True:
        return True, "offline=True"
    if offline is None:
        if _env_flag("HF_HUB_OFFLINE"):
            return True, "HF_HUB_OFFLINE is set"
        if not hub_reachable():
            return True, "hub unreachable: no network"
    return False, ""


def _hub_cache_dir(cache_dir: str | Path | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def find_in_hub_cache(repo_id: str, filenames: Iterable[str], cache_dir: str | Path | None = None) -> Path | None:
    """A file of hub repository ``repo_id`` already in the local cache; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    for filename in filenames:
        hit = try_to_load_from_cache(repo_id.strip("/"), filename, cache_dir=_hub_cache_dir(cache_dir))
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def hub_download(repo_id: str, filenames: Iterable[str], cache_dir: str | Path | None = None) -> Path:
    """Download the first of ``filenames`` that hub repository ``repo_id`` has, into the cache."""
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id.strip("/"), filename, cache_dir=_hub_cache_dir(cache_dir)))
        except Exception as exc:  # try the next file name; report all if none works
            errors.append(f"{filename}: {type(exc).__name__}")
    raise FileNotFoundError(f"{repo_id} has none of {', '.join(errors)}")


def cache_description(repo_id: str, filenames: Iterable[str], cache_dir: str | Path | None) -> str:
    folder = "models--" + repo_id.strip("/").replace("/", "--")
    return f"{Path(_hub_cache_dir(cache_dir)) / folder}/snapshots/*/{'|'.join(filenames)}"


def missing_weights_message(
    name: str,
    looked_for: list[str],
    random_flag: str = "--allow-random-weights",
    download_hint: str | None = None,
) -> str:
    """The text of :class:`MissingWeightsError`: the model, what was searched, the three ways."""
    stem = name.replace("/", ".")
    hint = download_hint or f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\""
    looked = "".join(f"\n    - {item}" for item in looked_for) or " (nothing)"
    return (
        f"no pretrained weights for {name!r}.\n"
        f"  looked for:{looked}\n"
        f"  provide them in one of three ways:\n"
        f"    1. --weights PATH (API: weights=PATH): a checkpoint file, or a folder holding {stem}.safetensors|.pth\n"
        f"    2. put {stem}.safetensors (or .pth) in the folder named by the {ENV_FOLDER} environment variable\n"
        f"    3. download once where the internet is reachable, so the Hugging Face cache holds it:\n"
        f"       {hint}\n"
        f"  or pass {random_flag} (API: allow_random_weights=True) to run with random weights, "
        f"reported as '{RANDOM_INIT}'."
    )


def looked_for_local(name: str, extra_names: Iterable[str]) -> list[str]:
    env = os.environ.get(ENV_FOLDER)
    if not env:
        return [f"${ENV_FOLDER}: not set"]
    files = candidate_files(Path(env).expanduser(), name, extra_names)
    return [f"${ENV_FOLDER}: " + ", ".join(str(p) for p in files[:4]) + (", ..." if len(files) > 4 else "")]
