import great_expectations.expectations as gxe
import pandas as pd

from probex_core.quality import validate


def test_suite_passes_on_good_data_and_names_the_failure_on_bad():
    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="repo_id"),
        gxe.ExpectColumnValuesToBeUnique(column="repo_id"),
        gxe.ExpectColumnValuesToBeBetween(column="acc", min_value=0, max_value=1),
    ]
    good = validate(pd.DataFrame({"repo_id": ["a/b", "a/c"], "acc": [0.5, 0.9]}), "t", expectations)
    assert good.success and good.evaluated == 3 and not good.failures
    bad = validate(pd.DataFrame({"repo_id": ["a/b", "a/b"], "acc": [0.5, 1.5]}), "t", expectations)
    assert not bad.success
    assert len(bad.failures) == 2
    assert any("unique" in f for f in bad.failures) and any("between" in f for f in bad.failures)


def test_embeddings_check_refuses_a_model_without_its_search_calibration(tmp_path):
    """`embeddings_valid` (model_predictions' check): a negative unknown-class mass or a
    missing one fails it and is named; a well-formed table passes."""
    from assets.evaluation import embeddings_valid
    from assets.resources import ProbexHome
    from probex_core.catalog import Home, write_table

    def check(mass: list) -> str:
        rows = pd.DataFrame(
            {
                "repo_id": ["org/a", "org/b"],
                "tree_id": ["t1", "t1"],
                "encoder": ["enc", "enc"],
                "embedding": [[1.0, 0.0], [0.6, 0.8]],
                "logit_scale": [5.0, 5.0],
                "vocab_lse": [1.0, 2.0],
                "unknown_mass": mass,
            }
        )
        write_table(Home(tmp_path), "model_embeddings", rows)
        result = embeddings_valid(probex_home=ProbexHome(root=str(tmp_path)))
        return "passed" if result.passed else result.metadata["summary"].text

    assert check([0.0, 2.5]) == "passed"
    assert "unknown_mass" in check([-0.5, 2.5])
    assert "unknown_mass" in check([None, 2.5])
