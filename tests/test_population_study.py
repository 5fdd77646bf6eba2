"""The population study's table: each population against the fixed schedule on the same data
seeds (paired), uncertified arms listed, the ceiling stated."""
from mtlsweep.studies.population_vs_fixed import markdown


def _res(arm, seed, test, certified=True, why=""):
    return {"sweep": f"{arm}-seed{seed}", "epochs": 300, "best": "t0", "val": test + 0.01, "test": test,
            "delta_test": test - 0.9, "gap": 0.05, "certified": certified, "why": why, "copies": 2,
            "best_epoch": 30, "trials": 8}


def test_a_population_is_compared_with_the_fixed_schedule_seed_by_seed():
    results = {"fixed": [_res("fixed", 0, 0.88), _res("fixed", 1, 0.90)],
               "pbt_lr": [_res("pbt_lr", 0, 0.89), _res("pbt_lr", 1, 0.93, certified=False, why="not converged")]}
    md = markdown(results, towers=[0.91, 0.92], oracle=[0.97, 0.96], trials=8, epochs=60, interval=4)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| arm")}
    assert rows["pbt_lr"][2] == "0.020 ± 0.014"          # paired: +0.01 and +0.03, not the means' difference alone
    assert rows["fixed"][2] == "–" and rows["pbt_lr"][5] == "1 of 2"
    assert "oracle, 0.965 ± 0.007" in md and "pbt_lr (pbt_lr-seed1): not converged" in md
