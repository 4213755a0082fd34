"""Where pretrained weights come from, and the loud error when they are nowhere.

Order of search for a model ``name`` (a timm name such as ``vit_small_patch16_224.dino``, or an
open_clip ``architecture/pretrained-tag`` pair):

1. ``weights=`` / ``--weights PATH``: a checkpoint file, or a folder holding ``<name>.*``;
2. the folder named by the ``FADER_KIT_WEIGHTS`` environment variable (same file names);
3. the Hugging Face hub cache (files already downloaded, read without touching the network),
   then the hub itself -- only when not offline and the hub answers a 3-second probe, so that a
   machine without network fails in seconds instead of sitting through minutes of retries.

When none has the weights a :class:`MissingWeightsError` names the model, the files looked for
and the three ways to provide them.  Random weights are used only when the caller passes
``allow_random_weights=True``, and the source is then reported as ``random-init``.

Checkpoint formats: timm ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` (a plain state dict, or one
wrapped under ``state_dict`` / ``model``; original-release files such as DINO's ``.pth`` go
through timm's own key conversion), and open_clip checkpoints (loaded by open_clip, which
converts its older layouts).  Loads are strict: a checkpoint that leaves any layer of the model
unset is an error, never a half-random model.  (Big-vision ``.npz`` files are not read; timm's
hub copies of those models are ``.safetensors``.)
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import torch
from torch import nn

from .errors import ConfigError, UnsafeFileError, UserError

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
        from .util.safe_load import torch_load_safe

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


def _hub_download(repo_id: str, filenames: Iterable[str], cache_dir: str | Path | None = None) -> Path:
    """Download the first of ``filenames`` that hub repository ``repo_id`` has, into the cache."""
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id.strip("/"), filename, cache_dir=_hub_cache_dir(cache_dir)))
        except Exception as exc:  # try the next file name; report all if none works
            errors.append(f"{filename}: {type(exc).__name__}")
    raise FileNotFoundError(f"{repo_id} has none of {', '.join(errors)}")


def _cache_description(repo_id: str, filenames: Iterable[str], cache_dir: str | Path | None) -> str:
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


def _looked_for_local(name: str, extra_names: Iterable[str]) -> list[str]:
    env = os.environ.get(ENV_FOLDER)
    if not env:
        return [f"${ENV_FOLDER}: not set"]
    files = candidate_files(Path(env).expanduser(), name, extra_names)
    return [f"${ENV_FOLDER}: " + ", ".join(str(p) for p in files[:4]) + (", ..." if len(files) > 4 else "")]


# -- timm ----------------------------------------------------------------------------------------
def _timm_hub_files(cfg: Any) -> list[str]:
    names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
    return names + ["model.safetensors", "pytorch_model.bin"]


def _url_name(url: str | None) -> list[str]:
    return [os.path.basename(urlparse(url).path)] if url else []


def _converted_timm_state(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint as timm itself would prepare it, minus the classifier when the model has none.

    timm's loader unwraps ``state_dict``/``model`` and strips ``module.``; the model family's
    ``checkpoint_filter_fn`` maps original-release layouts (DINO's ``.pth``) and resizes position
    embeddings.  timm's own pretrained route would then load *non-strictly* whenever the class
    count differs, silently keeping random layers; here only the classifier is dropped, and only
    for a head-less model, so the load that follows can stay strict.
    """
    import sys

    from timm.models import load_state_dict as timm_load_state_dict

    try:
        state = timm_load_state_dict(str(path), weights_only=True)  # never unpickle code
    except Exception as exc:
        raise MissingWeightsError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, model)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if getattr(model, "num_classes", None) == 0 and classifier:
        for name in (classifier,) if isinstance(classifier, str) else classifier:
            state.pop(f"{name}.weight", None)
            state.pop(f"{name}.bias", None)
    return state


def load_timm_checkpoint(model: nn.Module, path: Path, name: str = "") -> nn.Module:
    """Load checkpoint ``path`` into timm ``model`` strictly; one readable error otherwise.

    First as it is (a file saved from a timm model of this shape), then through
    :func:`_converted_timm_state`.  Never a partial load.
    """
    try:
        load_state_into(model, read_checkpoint(path), source=str(path))
        return model
    except MissingWeightsError as as_is:
        try:
            state = _converted_timm_state(model, path)
            load_state_into(model, state, source=str(path))
            return model
        except Exception:
            raise MissingWeightsError(str(as_is), model=name, looked_for=[str(path)]) from as_is


def load_timm_model(
    name: str,
    *,
    weights: str | Path | None = None,
    allow_random_weights: bool = False,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
    **create_kwargs: Any,
) -> tuple[nn.Module, str]:
    """Create timm model ``name`` with pretrained weights; return ``(model, source)``.

    ``source`` is ``file:<path>``, ``hub:<name>`` or ``random-init``.  ``offline`` (default:
    ``HF_HUB_OFFLINE``, or a hub that does not answer) forbids network access and uses the hub
    cache only; ``cache_dir`` overrides the Hugging Face cache folder.  ``create_kwargs`` go to
    ``timm.create_model`` (e.g. ``img_size``).  The model is returned in eval mode.
    """
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None and not timm.is_model(name.split(".", 1)[0]):
        raise ConfigError(f"unknown timm model {name!r}")
    url_names = _url_name(getattr(cfg, "url", None))
    local = find_local_weights(name, weights, extra_names=url_names, folder_names=_timm_hub_files(cfg) if cfg else ())
    if local is not None:
        model = timm.create_model(name, pretrained=False, **create_kwargs)
        return load_timm_checkpoint(model, local, name).eval(), f"file:{local.resolve()}"

    looked = ["--weights / weights=: not given"] + _looked_for_local(name, url_names)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        hub_files = _timm_hub_files(cfg)
        cached = find_in_hub_cache(hub_id, hub_files, cache_dir)
        if cached is not None:
            model = timm.create_model(name, pretrained=False, **create_kwargs)
            return load_timm_checkpoint(model, cached, name).eval(), f"hub:{name}"
        looked.append(f"Hugging Face cache: {_cache_description(hub_id, hub_files, cache_dir)} (not there)")
    stay_offline, why = resolve_offline(offline)
    if stay_offline:
        looked.append(f"Hugging Face hub: not tried ({why})")
    else:
        try:
            model = timm.create_model(name, pretrained=False, **create_kwargs)
            if hub_id:  # download into the cache, then the same strict load as a cached file
                downloaded = _hub_download(hub_id, _timm_hub_files(cfg), cache_dir)
                return load_timm_checkpoint(model, downloaded, name).eval(), f"hub:{name}"
            model = timm.create_model(name, pretrained=True, **create_kwargs)  # URL-only weights
            return model.eval(), f"hub:{name}"
        except Exception as exc:  # unreachable hub, missing file: fall through to the loud error
            looked.append(f"Hugging Face hub: download failed ({type(exc).__name__}: {str(exc)[:160]})")
    if allow_random_weights:
        return timm.create_model(name, pretrained=False, **create_kwargs).eval(), RANDOM_INIT
    raise MissingWeightsError(missing_weights_message(name, looked), model=name, looked_for=looked)


# -- open_clip -----------------------------------------------------------------------------------
def _open_clip_files(pcfg: dict[str, Any]) -> tuple[str | None, list[str]]:
    # open_clip writes "org/repo/" or "org/repo/filename"
    parts = [part for part in (pcfg.get("hf_hub") or "").split("/") if part]
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    files = [filename] if filename else []
    files += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    return (repo_id or None), files


def _open_clip_url_cache(pcfg: dict[str, Any]) -> Path | None:
    """The file open_clip itself downloads from a release URL (``~/.cache/clip/<basename>``)."""
    for name in _url_name(pcfg.get("url")):
        path = Path("~/.cache/clip").expanduser() / name
        if path.is_file():
            return path
    return None


def load_open_clip_model(
    architecture: str,
    pretrained: str,
    *,
    weights: str | Path | None = None,
    allow_random_weights: bool = False,
    offline: bool | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[nn.Module, str]:
    """Create open_clip ``architecture`` with the ``pretrained`` tag's weights; ``(model, source)``.

    Local files are looked for as ``<architecture>.<pretrained>.*`` / ``<architecture>.*`` (and
    the release file name); ``source`` is ``file:<path>``, ``hub:<architecture>/<pretrained>``
    or ``random-init``.  The model is returned in eval mode.
    """
    import open_clip
    from open_clip import pretrained as oc_pretrained

    if architecture not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip architecture {architecture!r}")
    name = f"{architecture}/{pretrained}"
    pcfg = oc_pretrained.get_pretrained_cfg(architecture, pretrained) or {}
    repo_id, hub_files = _open_clip_files(pcfg)
    url_names = _url_name(pcfg.get("url"))
    local = find_local_weights(name, weights, extra_names=[*url_names], folder_names=hub_files)
    if local is None and weights is None:  # also accept the bare architecture name in the env folder
        local = find_local_weights(architecture, None)

    def from_file(path: Path) -> nn.Module:
        model = open_clip.create_model(architecture, pretrained=None)
        try:
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)  # never unpickle code
        except Exception as exc:
            first = " | ".join(str(exc).splitlines()[:4])
            raise MissingWeightsError(
                f"checkpoint {path} does not fit open_clip {architecture}: {type(exc).__name__}: {first}",
                model=name,
                looked_for=[str(path)],
            ) from exc
        return model.eval()

    if local is not None:
        return from_file(local), f"file:{local.resolve()}"
    looked = ["--weights / weights=: not given"] + _looked_for_local(name, url_names)
    if repo_id:
        cached = find_in_hub_cache(repo_id, hub_files, cache_dir)
        if cached is not None:
            return from_file(cached), f"hub:{name}"
        looked.append(f"Hugging Face cache: {_cache_description(repo_id, hub_files, cache_dir)} (not there)")
    url_cached = _open_clip_url_cache(pcfg)
    if url_cached is not None:
        return from_file(url_cached), f"hub:{name}"
    if url_names:
        looked.append(f"open_clip URL cache: ~/.cache/clip/{url_names[0]} (not there)")
    stay_offline, why = resolve_offline(offline)
    if stay_offline or not pcfg:
        looked.append(f"Hugging Face hub: not tried ({why or 'no pretrained entry'})")
    else:
        try:
            return open_clip.create_model(architecture, pretrained=pretrained).eval(), f"hub:{name}"
        except Exception as exc:
            looked.append(f"Hugging Face hub: download failed ({type(exc).__name__}: {str(exc)[:160]})")
    if allow_random_weights:
        return open_clip.create_model(architecture, pretrained=None).eval(), RANDOM_INIT
    hint = f"python -c \"import open_clip; open_clip.create_model('{architecture}', pretrained='{pretrained}')\""
    raise MissingWeightsError(
        missing_weights_message(name, looked, download_hint=hint), model=name, looked_for=looked
    )


WeightsLoader = Callable[..., tuple[nn.Module, str]]
