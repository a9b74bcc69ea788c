# my_study.smk: the fundusfm workflow plus my own rules (docs/adding-a-dataset.md, way b).
#   snakemake -s my_study.smk --cores all --configfile my.yaml
include: "Snakefile"


rule study:
    """The whole study (the workflow's `all`): this file's default target, since an
    included file's default target does not carry over and would be my first rule."""
    default_target: True
    input:
        rules.all.input,


rule clinic_b_manifest:
    """Manifest of the clinic B export (one folder per patient and visit, JSON sidecars)."""
    input:
        "data/clinic_b",
    output:
        "results/user/clinic_b_manifest.csv",
    run:
        import csv
        import json
        from pathlib import Path

        root = Path(input[0])
        diagnosis = {"glaucoma": 1, "healthy": 0}
        header = [
            "image_id",
            "path",
            "patient_id",
            "eye",
            "glaucoma",
            "source_label",
        ]
        with open(output[0], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for notes in sorted(root.glob("*/*/notes.json")):
                visit = notes.parent
                for side, text in json.loads(notes.read_text()).items():
                    image = visit / f"{side}.png"
                    w.writerow(
                        [
                            f"{visit.parent.name}_{visit.name}_{side}",  # unique image id
                            image.relative_to(root).as_posix(),  # relative to root
                            visit.parent.name,  # patient
                            {"OD": "R", "OS": "L"}[side],
                            diagnosis.get(text, ""),  # unknown -> empty
                            text,
                        ]
                    )
