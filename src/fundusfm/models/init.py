"""Init sources and key-match reports.

``load_init(model, spec)`` fills a freshly created model from one of:

* ``random``      nothing to load (timm's initialisation);
* ``imagenet``    timm's pretrained weights for the same architecture (timm's normal
  loading, offline cache or local file override, see :func:`fundusfm.models.factory.create`);
* ``checkpoint:<path>``  external weights: a safetensors file or a torch state dict
  (optionally nested under ``model`` / ``state_dict``, ``module.`` prefixes stripped), or
  the paper's released ResNet50 (a whole pickled ``DataParallel`` module, loaded only
  with ``trust_pickle=True`` and converted once to ``<results>/conversions/<sha256>.safetensors``,
  :func:`read_checkpoint`).  The key
  layout is a *format* (:mod:`fundusfm.models.formats`: RETFound MAE, RETFound-Green,
  DINOv2, FLAIR, the paper's release, timm names), detected from the keys unless named.

Every load returns a :class:`KeyReport`.  The final classifier layer always keeps its
fresh initialisation, whatever its shape: every init then differs from the others only in
the representation, never in a ready-made output (a 2-class task from a normal/abnormal
checkpoint would otherwise start with the upstream classifier).  ``carry_head="hidden"``
carries the *hidden* layers of a multi-layer head (the paper's 2048->512->BN->ReLU block)
when their shapes fit; it is an explicit, named option (:data:`CARRY_HEAD`).  Anything
beyond the head that does not match is a partial load, which fails unless
``allow_partial=True``.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from fundusfm.fileio import write_safetensors
from fundusfm.hashing import sha256_file
from fundusfm.models.factory import classifier_name, create, head_prefixes

log = logging.getLogger(__name__)

NESTED_KEYS = ("model", "state_dict", "model_state_dict", "module", "net", "teacher")  # teacher: DINOv2
# what of a checkpoint's classification head a fine-tune starts from: nothing (default),
# or its hidden layers (never the final layer)
CARRY_HEAD = ("none", "hidden")


class InitError(RuntimeError):
    """An init source could not be loaded into the model as asked (``report``: the key
    report of the attempted match, when there was one)."""

    def __init__(self, message: str, report: "KeyReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class KeyReport:
    """What a weight load did, key by key."""

    source: str
    n_model_keys: int = 0
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys not in the source (non-head)
    unexpected: list[str] = field(default_factory=list)  # source keys unknown to the model (non-head)
    shape_mismatch: list[str] = field(default_factory=list)  # "key: source (..) vs model (..)"
    head_reinitialised: list[str] = field(default_factory=list)  # head keys left at fresh init
    head_dropped: list[str] = field(default_factory=list)  # source head keys not used
    head_carried: list[str] = field(default_factory=list)  # hidden head keys loaded (carry_head='hidden')
    carry_head: str = "none"
    dropped: list[str] = field(default_factory=list)  # source keys dropped on purpose (MAE decoder)
    renamed: dict[str, str] = field(default_factory=dict)
    converted_to: str | None = None
    format: str | None = None  # checkpoint format (models.formats); "(auto)" when detected
    fresh: list[str] = field(default_factory=list)  # model keys left fresh on purpose (MAE fc_norm)

    @property
    def partial(self) -> bool:
        """True when something beyond the head did not match."""
        return bool(self.missing or self.unexpected or self.shape_mismatch)

    def summary(self) -> str:
        """One line for the log."""
        parts = [
            f"{self.source}: loaded {len(self.loaded)}/{self.n_model_keys} model keys",
            f"missing {len(self.missing)}",
            f"unexpected {len(self.unexpected)}",
            f"shape-mismatch {len(self.shape_mismatch)}",
            f"head re-initialised {len(self.head_reinitialised)}",
            f"hidden head keys carried {len(self.head_carried)}",
            f"head keys dropped {len(self.head_dropped)}",
        ]
        if self.format:
            parts.insert(1, f"format {self.format}")
        if self.fresh:
            parts.append(f"fresh on purpose {self.fresh}")
        if self.dropped:
            parts.append(f"dropped on purpose {len(self.dropped)}")
        if self.renamed:
            parts.append(f"renamed {self.renamed}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready form (the loaded list as a count: it is most of the model)."""
        d = asdict(self)
        d["loaded"] = len(self.loaded)
        d["partial"] = self.partial
        return d


def _is_ignorable(key: str) -> bool:
    # BatchNorm step counters carry no learnt information
    return key.endswith("num_batches_tracked")


def final_layer_prefix(model: nn.Module) -> str:
    """State-dict prefix of the model's *final* classifier layer: the classifier itself
    when it is one layer, else the last parametrised layer of a ``Sequential`` head."""
    name = classifier_name(model)
    clf = model.get_submodule(name)
    if isinstance(clf, nn.Sequential):
        last = [k for k, m in clf.named_children() if any(True for _ in m.parameters(recurse=True))]
        if last:
            return f"{name}.{last[-1]}."
    return name + "."


def match_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, carry_head: str = "none"
) -> tuple[dict[str, torch.Tensor], KeyReport]:
    """Keep the entries of ``state`` that fit ``model`` and report the rest.

    Head keys are never kept, except the hidden head layers with ``carry_head='hidden'``;
    the final classifier layer always stays fresh (see the module docstring).
    """
    if carry_head not in CARRY_HEAD:
        raise InitError(f"carry_head must be one of {CARRY_HEAD}, got {carry_head!r}")
    target = model.state_dict()
    heads = head_prefixes(model)
    final = final_layer_prefix(model)
    is_head = lambda k: k.startswith(heads)  # noqa: E731
    report = KeyReport(source=source, n_model_keys=sum(not _is_ignorable(k) for k in target), carry_head=carry_head)
    keep: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            if _is_ignorable(key):
                continue
            if is_head(key):
                report.head_dropped.append(key)
            elif not _is_ignorable(key):
                report.unexpected.append(key)
            continue
        if is_head(key) and (carry_head == "none" or key.startswith(final)):
            if not _is_ignorable(key):
                report.head_dropped.append(key)
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            if is_head(key):
                report.head_dropped.append(key)
            else:
                report.shape_mismatch.append(
                    f"{key}: source {tuple(value.shape)} vs model {tuple(target[key].shape)}"
                )
            continue
        keep[key] = value
        if not _is_ignorable(key):
            (report.head_carried if is_head(key) else report.loaded).append(key)
    for key in target:
        if key in keep or _is_ignorable(key):
            continue
        (report.head_reinitialised if is_head(key) else report.missing).append(key)
    return keep, report


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict from a loaded object (module, nested dict, state dict)."""
    if isinstance(obj, nn.Module):
        obj = obj.module if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else obj
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise InitError(f"{path}: expected a state dict or a module, found {type(obj).__name__}")
    for nested in NESTED_KEYS:
        inner = obj.get(nested)
        if isinstance(inner, (dict, nn.Module)) and not torch.is_tensor(inner):
            return _unwrap(inner, path)
    state = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not state:
        raise InitError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    # DataParallel / DDP prefix every key with 'module.'
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False,
                    conversions: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """Read weights from ``path``; returns (state dict, path of the safetensors conversion
    used or written, or None). See :func:`read_checkpoint_file`."""
    state, converted, _ = read_checkpoint_file(path, trust_pickle, conversions)
    return state, converted


def conversion_path(conversions: str | os.PathLike, source_sha256: str) -> Path:
    """Where the conversion of a checkpoint with this SHA-256 lives: keyed by the source's
    bytes, not its name, so a renamed or copied checkpoint finds it and new bytes at the
    same path never do."""
    return Path(conversions) / f"{source_sha256}.safetensors"


def read_checkpoint_file(path: str | os.PathLike, trust_pickle: bool = False,
                         conversions: str | os.PathLike | None = None
                         ) -> tuple[dict[str, torch.Tensor], str | None, bool]:
    """Read weights from ``path``: ``(state dict, conversion path or None, unpickled)``.

    Pickled whole modules (the paper's release) run code when unpickled, so they load
    only with ``trust_pickle=True``. Their conversion to safetensors is kept in the results
    tree, ``<conversions>/<sha256 of the source>.safetensors`` (``<results>/conversions``,
    :func:`fundusfm.layout.conversions_dir_of`), its header recording the source's name,
    SHA-256 and ``trust_pickle``; it is used again only under ``trust_pickle`` and only
    when its header names these bytes. A file beside the checkpoint (``<path>.safetensors``,
    where older versions wrote conversions) is never read: anyone who can write next to a
    checkpoint could plant weights there. Without ``conversions`` nothing is cached.
    """
    path = Path(path)
    if not path.is_file():
        raise InitError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path), None, False
    beside = path.with_name(path.name + ".safetensors")
    if beside.is_file():
        log.info("ignoring %s: a file beside a checkpoint is not taken on its word (conversions live in the "
                 "results tree, <results>/conversions)", beside)
    source_sha = sha256_file(path)
    converted = conversion_path(conversions, source_sha) if conversions is not None else None
    if trust_pickle and converted is not None and converted.is_file() and \
            _conversion_header(converted) == {"source_sha256": source_sha, "trust_pickle": "true"}:
        log.info("using the safetensors conversion %s of %s (same SHA-256, made under trust_pickle)", converted, path)
        return _load_safetensors(converted), str(converted), True
    try:
        # MAE / RETFound checkpoints carry their argparse.Namespace ('args'): plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path), None, False
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise InitError(
                f"{path} is not a plain state dict: it is a pickled Python object (e.g. the "
                "paper's released DataParallel ResNet50), and unpickling runs code from the file. "
                "If you trust its origin, pass --trust-pickle (trust_pickle=True); it is then "
                "converted once to safetensors in the results tree (<results>/conversions)."
                f"\n(torch said: {str(exc).splitlines()[0]})"
            ) from exc
    log.warning("unpickling %s as a whole Python object (trusted by --trust-pickle)", path)
    state = _unwrap(torch.load(path, map_location="cpu", weights_only=False), path)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if converted is None:
        return state, None, True
    try:
        write_safetensors(converted, state, metadata={"source": path.name, "source_sha256": source_sha,
                                                      "trust_pickle": "true"})
        log.info("converted %s to %s", path, converted)
        return state, str(converted), True
    except OSError as exc:  # read-only results tree: still usable, just not cached
        log.warning("could not write the safetensors conversion %s of %s: %s", converted, path, exc)
        return state, None, True


def _conversion_header(converted: Path) -> dict | None:
    """``source_sha256`` and ``trust_pickle`` of a conversion's header (``None``:
    unreadable, so it is redone)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(converted), "pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError):
        return None
    return {k: meta.get(k) for k in ("source_sha256", "trust_pickle")}


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise InitError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None


def apply_key_map(state: dict[str, torch.Tensor], key_map: dict[str, str | None],
                  report: KeyReport) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys by prefix before the format reads them: ``{"encoder.": ""}``
    strips a prefix, ``{"text.": None}`` drops those keys (the longest matching prefix
    wins). Renames go to ``report.renamed``, drops to ``report.dropped``; a prefix that
    matches no key is an error (a typo would otherwise pass silently)."""
    if not key_map:
        return state
    bad = {p: v for p, v in key_map.items() if not isinstance(p, str) or not (v is None or isinstance(v, str))}
    if bad:
        raise InitError(f"{report.source}: key_map entries {bad} are not prefix -> new prefix (a string; '' strips "
                        "the prefix) or prefix -> null (drops those keys)")
    prefixes = sorted(key_map, key=len, reverse=True)
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        hit = next((p for p in prefixes if key.startswith(p)), None)
        if hit is None:
            out[key] = value
            continue
        used.add(hit)
        if key_map[hit] is None:
            report.dropped.append(key)
        else:
            out[key_map[hit] + key[len(hit):]] = value
    unused = [p for p in key_map if p not in used]
    if unused:
        from fundusfm.models.formats import describe_keys  # formats builds on this module

        raise InitError(f"{report.source}: key_map prefix(es) {unused} match no key of the checkpoint: fix or "
                        f"remove them (the init's key_map, --key-map-json). It holds {describe_keys(state)}")
    report.renamed.update({p: ("(dropped)" if v is None else v) for p, v in key_map.items()})
    return out


def load_init(
    model: nn.Module,
    init_spec: str,
    *,
    trust_pickle: bool = False,
    allow_partial: bool = False,
    imagenet_weights: str | os.PathLike | None = None,
    checkpoint_format: str = "auto",
    key_map: dict[str, str | None] | None = None,
    carry_head: str = "none",
    conversions: str | os.PathLike | None = None,
) -> KeyReport:
    """Load the init source ``init_spec`` into ``model`` in place and return the key report.

    ``conversions``: the folder of safetensors conversions of trusted pickles (see
    :func:`read_checkpoint_file`; ``None``: converted in memory each time).

    ``checkpoint_format`` names the key layout of a ``checkpoint:`` file (one of
    :func:`fundusfm.models.formats.names`; ``auto`` detects it from the keys); ``key_map``
    renames its keys by prefix first (:func:`apply_key_map`). The final
    classifier layer is never loaded; ``carry_head='hidden'`` loads the hidden layers of a
    multi-layer head (see :data:`CARRY_HEAD`).

    Raises :class:`InitError` when nothing of the backbone matches (wrong architecture),
    or when the match is partial beyond the head and ``allow_partial`` is False.
    """
    if init_spec == "random":
        report = KeyReport(source="random", n_model_keys=len(model.state_dict()), carry_head=carry_head)
        log.info("init random: timm initialisation, nothing loaded")
        return report
    if init_spec == "imagenet":
        arch = model.pretrained_cfg["architecture"]
        ref = create(arch, num_classes=1000, head="timm", pretrained_init="imagenet", imagenet_weights=imagenet_weights)
        state = ref.state_dict()
        source = f"imagenet:{arch}"
        converted, path, checkpoint_format, unpickled = None, None, "timm", False
    elif init_spec.startswith("checkpoint:"):
        path = init_spec[len("checkpoint:"):]
        state, converted, unpickled = read_checkpoint_file(path, trust_pickle=trust_pickle, conversions=conversions)
        source = f"checkpoint:{path}"
    else:
        raise InitError(f"unknown init {init_spec!r}: use random | imagenet | checkpoint:<path>")

    from fundusfm.models import formats  # formats builds on this module

    pre, raw = KeyReport(source=source), state
    state = apply_key_map(state, key_map or {}, pre)
    ck = formats.checkpoint_from(state, path, unpickled=unpickled)
    state = formats.convert(ck, model, pre, checkpoint_format)
    keep, report = match_state_dict(model, state, source, carry_head=carry_head)
    report.converted_to = converted
    formats.finish_report(report, pre)
    log.info("init %s", report.summary())
    if not report.loaded or len(report.loaded) < 0.5 * report.n_model_keys:
        raise InitError(
            f"{source} does not fit {model.pretrained_cfg.get('architecture', type(model).__name__)}: "
            f"only {len(report.loaded)} of {report.n_model_keys} model keys match "
            f"(e.g. missing {report.missing[:3]}, unexpected {report.unexpected[:3]}, "
            f"shape mismatch {report.shape_mismatch[:3]}). Is it a checkpoint of another architecture?"
            + formats.seen_note(report, raw), report=report,
        )
    if report.partial and not allow_partial:
        raise InitError(
            f"{source} matches only partly beyond the head: {report.summary()}. "
            f"missing {report.missing[:5]}, unexpected {report.unexpected[:5]}, "
            f"shape mismatch {report.shape_mismatch[:5]}. Pass --allow-partial to accept."
            + formats.seen_note(report, raw), report=report,
        )
    model.load_state_dict(keep, strict=False)
    return report
