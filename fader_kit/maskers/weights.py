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
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from fader_kit.errors import ConfigError
from fader_kit.maskers.weight_files import (  # noqa: F401  (the names users import from here)
    CHECKPOINT_SUFFIXES, ENV_FOLDER, HUB_PROBE_TIMEOUT_S, RANDOM_INIT, MissingWeightsError, cache_description,
    hub_download, looked_for_local, candidate_files, find_in_hub_cache, find_local_weights, hub_reachable,
    load_state_into, missing_weights_message, read_checkpoint, resolve_offline,
)


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

    looked = ["--weights / weights=: not given"] + looked_for_local(name, url_names)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        hub_files = _timm_hub_files(cfg)
        cached = find_in_hub_cache(hub_id, hub_files, cache_dir)
        if cached is not None:
            model = timm.create_model(name, pretrained=False, **create_kwargs)
            return load_timm_checkpoint(model, cached, name).eval(), f"hub:{name}"
        looked.append(f"Hugging Face cache: {cache_description(hub_id, hub_files, cache_dir)} (not there)")
    stay_offline, why = resolve_offline(offline)
    if stay_offline:
        looked.append(f"Hugging Face hub: not tried ({why})")
    else:
        try:
            model = timm.create_model(name, pretrained=False, **create_kwargs)
            if hub_id:  # download into the cache, then the same strict load as a cached file
                downloaded = hub_download(hub_id, _timm_hub_files(cfg), cache_dir)
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


def _open_clip_from_file(architecture: str, name: str, path: Path) -> nn.Module:
    """open_clip ``architecture`` with the checkpoint at ``path`` (strict; never unpickles code)."""
    import open_clip

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
        return _open_clip_from_file(architecture, name, path)

    if local is not None:
        return from_file(local), f"file:{local.resolve()}"
    looked = ["--weights / weights=: not given"] + looked_for_local(name, url_names)
    if repo_id:
        cached = find_in_hub_cache(repo_id, hub_files, cache_dir)
        if cached is not None:
            return from_file(cached), f"hub:{name}"
        looked.append(f"Hugging Face cache: {cache_description(repo_id, hub_files, cache_dir)} (not there)")
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
