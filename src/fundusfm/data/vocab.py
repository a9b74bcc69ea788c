"""Harmonised label vocabulary shared by every dataset's manifest.

Every label column is nullable: an empty cell means *unknown*, never "negative".
Adapters map each dataset's own labels onto these columns with explicit tables
(written down in ``docs/datasets.md``); a source label with no entry in its
adapter's table is reported, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Label:
    """One harmonised label column: its allowed values and what it means."""

    values: tuple
    description: str


BINARY = (0, 1)

LABELS: dict[str, Label] = {
    "normal": Label(BINARY, "1 = no disease found (the dataset says so, or derived as 1 - abnormal)"),
    "abnormal": Label(BINARY, "1 = any disease column is 1; 0 only where the dataset's labels are exhaustive"),
    "dr_grade": Label((0, 1, 2, 3, 4), "diabetic retinopathy, ICDR grade 0 none .. 4 proliferative"),
    "dme": Label(BINARY, "diabetic macular edema (any risk / grade > 0)"),
    "dme_grade": Label((0, 1, 2), "DME risk grade (IDRiD 0-2)"),
    "glaucoma": Label(BINARY, "glaucoma (definite)"),
    "glaucoma_suspect": Label(BINARY, "glaucoma suspect (large cup, suspected glaucoma)"),
    "amd": Label(BINARY, "age-related macular degeneration (dry or wet)"),
    "myopia": Label(BINARY, "pathologic myopia / myopic retinopathy"),
    "rvo": Label(BINARY, "retinal vein occlusion (branch or central)"),
    "brvo": Label(BINARY, "branch retinal vein occlusion"),
    "crvo": Label(BINARY, "central retinal vein occlusion"),
    "cataract": Label(BINARY, "cataract"),
    "hypertensive": Label(BINARY, "hypertensive retinopathy"),
    "other": Label(BINARY, "any other listed retinal disease (see each adapter's table)"),
    "quality": Label(("good", "usable", "reject"), "image quality grade (EyeQ-style)"),
}

# Columns whose 1 makes an image abnormal. glaucoma_suspect is deliberately absent:
# a suspect is neither confirmed disease nor normal, so it leaves `abnormal` unknown.
DISEASE_COLUMNS: tuple[str, ...] = (
    "dr_grade", "dme", "dme_grade", "glaucoma", "amd", "myopia", "rvo", "brvo", "crvo",
    "cataract", "hypertensive", "other",
)
# Columns that, when positive, block the "all diseases negative => normal" derivation.
UNCERTAIN_COLUMNS: tuple[str, ...] = ("glaucoma_suspect",)

LABEL_COLUMNS: tuple[str, ...] = tuple(LABELS)
NUMERIC_LABELS: tuple[str, ...] = tuple(k for k, v in LABELS.items() if all(isinstance(x, int) for x in v.values))


def allowed_values(column: str) -> tuple:
    """Allowed values of a harmonised label column (KeyError names the vocabulary)."""
    try:
        return LABELS[column].values
    except KeyError:
        raise KeyError(f"{column!r} is not a harmonised label; known: {', '.join(LABELS)}") from None


def harmonise_abnormal(df: pd.DataFrame, exhaustive: bool = False) -> pd.DataFrame:
    """Fill unknown ``abnormal`` / ``normal`` cells from the disease columns.

    ``abnormal`` becomes 1 where any disease column is positive (``dr_grade`` > 0 counts).
    It becomes 0 only when ``exhaustive`` is true (the dataset lists every disease it
    found, e.g. ODIR keywords, RFMiD) and every disease column present is known and 0
    and no suspect column is 1. ``normal`` = 1 - ``abnormal`` where unknown. Values the
    dataset gave explicitly are never overwritten. Returns a new frame.
    """
    out = df.copy()
    disease = [c for c in DISEASE_COLUMNS if c in out.columns]
    uncertain = [c for c in UNCERTAIN_COLUMNS if c in out.columns]
    for col in ("normal", "abnormal"):
        if col not in out.columns:
            out[col] = pd.array([pd.NA] * len(out), dtype="Int64")
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64")
    if disease:
        vals = out[disease].apply(pd.to_numeric, errors="coerce")
        positive = (vals > 0).any(axis=1)
        all_known_negative = vals.notna().all(axis=1) & (vals == 0).all(axis=1)
    else:
        positive = pd.Series(False, index=out.index)
        all_known_negative = pd.Series(False, index=out.index)
    if uncertain:
        suspect = (out[uncertain].apply(pd.to_numeric, errors="coerce") == 1).any(axis=1)
    else:
        suspect = pd.Series(False, index=out.index)
    unknown = out["abnormal"].isna()
    # an explicit normal=1/0 from the dataset decides abnormal before any derivation
    from_normal = unknown & out["normal"].notna()
    out.loc[from_normal, "abnormal"] = 1 - out.loc[from_normal, "normal"]
    unknown = out["abnormal"].isna()
    out.loc[unknown & positive, "abnormal"] = 1
    if exhaustive and disease:
        out.loc[unknown & ~positive & all_known_negative & ~suspect, "abnormal"] = 0
    fill_normal = out["normal"].isna() & out["abnormal"].notna()
    out.loc[fill_normal, "normal"] = 1 - out.loc[fill_normal, "abnormal"]
    return out


def label_conflicts(df: pd.DataFrame) -> list[tuple[int, str]]:
    """Rows (positional index, reason) whose labels contradict each other."""
    problems: list[tuple[int, str]] = []
    n = pd.to_numeric(df["normal"], errors="coerce") if "normal" in df else pd.Series(float("nan"), index=df.index)
    a = pd.to_numeric(df["abnormal"], errors="coerce") if "abnormal" in df else pd.Series(float("nan"), index=df.index)
    n, a = n.astype("float64").to_numpy(), a.astype("float64").to_numpy()
    disease = [c for c in DISEASE_COLUMNS if c in df.columns]
    pos = {c: (pd.to_numeric(df[c], errors="coerce").astype("float64").to_numpy() > 0) for c in disease}
    for i in range(len(df)):
        if n[i] == n[i] and a[i] == a[i] and n[i] + a[i] != 1:  # x == x: not NaN
            problems.append((i, f"normal={int(n[i])} and abnormal={int(a[i])} must sum to 1"))
        if a[i] == 0:
            hits = [c for c in disease if pos[c][i]]
            if hits:
                problems.append((i, f"abnormal=0 but {', '.join(hits)} positive"))
    return problems
