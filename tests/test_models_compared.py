"""Several models in one run: a teacher and its distilled student as candidate deployments.
The first model is the reference; the student's quality cell is compared with the teacher's
reference configuration on the same HellaSwag items, and (one tokenizer) on the same windows
and distributions. A model that tokenizes differently pairs on HellaSwag only."""
import json
import re

import pytest

from evaluator import evaluate, run, store
from evaluator.catalog import backends
from evaluator.score.quality import Quality
from tests.conftest import run_cli
from tests.test_eval import cells, run_folder

QUICK = ["--scenarios", "quality", "--limit", "100", "--ppl-tokens", "5000"]


@pytest.fixture(scope="module")
def teacher_and_student(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    proc = run_cli("eval", "stories260k,stories260k-student", "--backends", "pytorch_eager", "--variants", "fp32-sdpa-kv",
                   "--reports", str(reports), *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, run_folder(proc.stderr, reports)


def test_the_student_is_judged_against_the_teacher_item_by_item(teacher_and_student):
    proc, folder = teacher_and_student
    by_model = {c["model"]["name"]: c for c in cells(folder).values()}
    assert set(by_model) == {"stories260k", "stories260k-student"}
    teacher, student = by_model["stories260k"], by_model["stories260k-student"]
    assert "quality_gate" not in teacher, "the first model's reference is what the others are judged against"
    assert "stories260k-student__pytorch_eager.fp32-sdpa-kv__local__quality" in proc.stderr.split("where the time went")[1]
    g = student["quality_gate"]
    assert g["reference"] == "stories260k · pytorch_eager.fp32-sdpa-kv@local"
    assert g["hellaswag"]["acc_norm"]["items"] == 100
    assert g["hellaswag"]["acc_norm"]["reference"] == teacher["metrics"]["hellaswag"]["acc_norm"]["value"]
    assert g["perplexity"]["windows"] > 1, "one tokenizer: the windows pair"
    assert student["fidelity"]["kl_mean"] > 0.01, "another model's distributions differ from the teacher's"
    assert ("quality stories260k-student · pytorch_eager.fp32-sdpa-kv@local vs stories260k · pytorch_eager.fp32-sdpa-kv@local"
            in proc.stderr)
    html = (folder / "index.html").read_text()
    assert "stories260k vs stories260k-student" in html
    assert "stories260k-student · pytorch_eager · fp32-sdpa-kv" in html
    run_info = json.loads((folder / "run.json").read_text())
    assert [m["name"] for m in run_info["models"]] == ["stories260k", "stories260k-student"]
    assert run_info["models"][0]["tokenizer_sha256"] == run_info["models"][1]["tokenizer_sha256"]


def test_a_model_that_tokenizes_differently_pairs_on_hellaswag_only(teacher_and_student, tmp_path):
    _, folder = teacher_and_student
    for cell in cells(folder).values():  # the same answers, as if the student's tokenizer were another
        if cell["model"]["name"] == "stories260k-student":
            cell["model"]["tokenizer_sha256"] = "another"
            cell.pop("quality_gate"), cell.pop("fidelity")
        cell["raw"] = str(folder / cell["raw"])
        store.write_json(tmp_path / "cells" / f"{cell['cell_id']}.json", cell)
    store.write_json(tmp_path / "run.json", json.loads((folder / "run.json").read_text()))
    eager = backends.select(["pytorch_eager"])[0]
    reference = run.Reference(eager, eager.variant("fp32-sdpa-kv"), model="stories260k")
    (student,) = evaluate.finish_quality(tmp_path, reference, 0.01, Quality(items="100", ppl_max_tokens=5000))
    assert "tokenize differently" in student["fidelity"]["unavailable"]
    assert "perplexity" not in student["quality_gate"] and student["quality_gate"]["hellaswag"]["acc_norm"]["items"] == 100
    assert "bits per byte" in student["quality_gate"]["perplexity_unpaired"]
    assert "tokenize differently" in evaluate.gate_line(student)
    from evaluator.report import html
    table = html.build(tmp_path).read_text().split('id="compare"')[1].split("</table>")[0]
    assert "bits per byte" in table and ">perplexity<" not in table, "token perplexities of two tokenizers do not compare"
    assert len(re.findall(r'data-metric="bits per byte">\d\.\d', table)) == 2, "each model's, from its 5,000 tokens' text"


@pytest.mark.parametrize("given, words", [
    ("stories260k,stories260k", "model 'stories260k' is named twice"),
    ("stories260k,", "has an empty model name"),
    ("stories260k,stories26k", "stories26k"),
])
def test_a_bad_list_of_models_is_one_line_and_exit_2(tmp_path, given, words):
    proc = run_cli("eval", given, "--reports", str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and words in lines[-1] and len(lines) <= 3, proc.stderr
    assert not list(tmp_path.iterdir())
