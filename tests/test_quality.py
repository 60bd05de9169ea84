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
