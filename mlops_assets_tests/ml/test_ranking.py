"""ml/ranking: metrics against hand-computed values, item-KNN and EASE against brute force, time-honest
evaluation, the gate's comparison, drift of item popularity, and the safe (skops) round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import skops.io

from mlops_assets.ml.promote import GatePolicy, decide_promotion
from mlops_assets.ml.ranking.metrics import (
    ap_at_k,
    compare_rankings,
    evaluate_days,
    hit_at_k,
    interaction_drift,
    judged_users,
    ndcg_at_k,
    ranking_decay,
    recall_at_k,
)
from mlops_assets.ml.ranking.models import (
    FAMILIES,
    SKOPS_TRUSTED_TYPES,
    Recommender,
    history_matrix,
    recommend_for_user,
    recommend_ids,
)


def test_metrics_match_hand_computed_values() -> None:
    rec, rel = ["a", "b", "c", "d"], {"b", "d"}
    # hits at ranks 2 (and 4, beyond k=3): DCG = 1/log2(3); ideal = 1 + 1/log2(3)
    assert ndcg_at_k(rec, rel, 3) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(rec, rel, 4) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert recall_at_k(rec, rel, 3) == 0.5
    assert ap_at_k(rec, rel, 3) == pytest.approx((1 / 2) / 2)  # precision 1/2 at the one hit, over min(2, 3)
    assert ap_at_k(rec, rel, 4) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert hit_at_k(rec, rel, 1) == 0.0 and hit_at_k(rec, rel, 2) == 1.0
    assert ndcg_at_k(["b", "d"], rel, 10) == pytest.approx(1.0)
    assert math.isnan(ndcg_at_k(rec, set(), 3))


def _interactions(seed: int = 0, users: int = 40, items: int = 25, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10, n), unit="D")
    frame = pd.DataFrame(
        {
            "user": rng.integers(0, users, n).astype(str),
            "item": (rng.zipf(1.6, n) % items).astype(str),
            "event_time": days + pd.to_timedelta(rng.integers(0, 86400, n), unit="s"),
        }
    ).drop_duplicates(["user", "item"])
    frame["event_day"] = frame["event_time"].dt.date
    frame["relevant"] = (rng.random(len(frame)) < 0.7).astype(float)
    return frame.reset_index(drop=True)


def test_item_knn_equals_brute_force_cosine() -> None:
    rows = _interactions()
    cutoff = pd.Timestamp("2024-01-11")
    k = 5
    model = Recommender("item_knn", {"neighbours": k}).fit(rows, cutoff)
    items = list(model.item_ids)
    # brute force: each item's set of users, cosine of binary vectors, top k neighbours per item
    users_of = {i: set(rows.loc[rows["item"] == i, "user"]) for i in items}
    cos = np.array(
        [
            [
                0.0 if a == b else len(users_of[a] & users_of[b]) / math.sqrt(len(users_of[a]) * len(users_of[b]))
                for b in items
            ]
            for a in items
        ]
    )
    for a in range(len(items)):
        kept = model.neighbour_sim[a]
        assert sorted(kept, reverse=True) == pytest.approx(sorted(cos[a], reverse=True)[:k], abs=1e-6)
        assert np.allclose(cos[a, model.neighbour_idx[a]], kept, atol=1e-6)
    # scores: the sum of the kept similarities from each item of the history
    user = rows["user"].iloc[0]
    hist = history_matrix(model, rows, [user])
    got = model.scores(hist)[0]
    seen = [items.index(i) for i in set(rows.loc[rows["user"] == user, "item"])]
    expect = np.zeros(len(items))
    for a in seen:
        for j, s in zip(model.neighbour_idx[a], model.neighbour_sim[a], strict=True):
            expect[j] += s
    assert np.allclose(got, expect, atol=1e-4)  # within the popularity tie-break
    top = recommend_ids(model, rows, [user], 5)[0]
    assert not set(top) & {items[a] for a in seen}  # seen items are never recommended
    order = [items[j] for j in np.argsort(-np.where(np.isin(np.arange(len(items)), seen), -np.inf, got))[:5]]
    assert top == order
    # the online path (one user, no frames) gives the batch path's list
    assert recommend_for_user(model, list(rows.loc[rows["user"] == user, "item"]), 5) == top


def test_ease_is_the_closed_form() -> None:
    rows = _interactions(1)
    lam = 10.0
    model = Recommender("ease", {"l2": lam}).fit(rows, pd.Timestamp("2024-01-11"))
    X = history_matrix(model, rows, sorted(rows["user"].unique())).toarray()
    P = np.linalg.inv(X.T @ X + lam * np.eye(X.shape[1]))
    B = np.eye(X.shape[1]) - P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    assert np.allclose(model.weights, B, atol=1e-5)


def test_cold_users_get_the_window_popularity_and_windows_drop_old_rows() -> None:
    rows = _interactions(2)
    model = Recommender("popularity", window_days=3).fit(rows, pd.Timestamp("2024-01-11"))
    recent = rows[rows["event_time"] >= pd.Timestamp("2024-01-08")]
    assert model.n_train == len(recent)
    expected = recent["item"].value_counts()
    top = recommend_ids(model, rows.iloc[0:0], ["someone new"], 3)[0]
    assert [expected[i] for i in top] == sorted(expected, reverse=True)[:3]
    for fam in FAMILIES:  # every family answers a user with no history
        m = Recommender(fam, {"factors": 4, "iterations": 2} if fam == "als" else {}).fit(
            rows, pd.Timestamp("2024-01-11")
        )
        assert len(recommend_ids(m, rows.iloc[0:0], ["nobody"], 4)[0]) == 4


def test_als_ranks_a_users_cluster_first() -> None:
    # two groups of users, each interacting only with its own half of the catalogue
    rows = pd.DataFrame(
        [
            {"user": f"u{u}", "item": f"i{i}"}
            for u in range(20)
            for i in range(10)
            if (u < 10) == (i < 5) and (u + i) % 4
        ]
    )
    rows["event_time"] = pd.Timestamp("2024-01-01")
    model = Recommender("als", {"factors": 4, "iterations": 10, "regularization": 0.1, "alpha": 10.0}).fit(
        rows, pd.Timestamp("2024-01-02")
    )
    # u1 has i0, i1, i2, i4 of its half: the one unseen item of its half comes first, then the other half
    assert recommend_ids(model, rows, ["u1"], 2)[0][0] == "i3"
    assert recommend_ids(model, rows, ["u12"], 1)[0][0] in {"i5", "i6", "i7", "i8", "i9"}


def test_evaluation_serves_lists_from_the_days_before() -> None:
    # item "new" is popular only on day 3: a popularity model fit before day 3 cannot know it
    rows = pd.DataFrame(
        {
            "user": ["a", "b", "c", "a", "d", "e", "f"],
            "item": ["x", "x", "y", "y", "new", "new", "new"],
            "event_time": pd.to_datetime(["2024-01-01"] * 3 + ["2024-01-02"] + ["2024-01-03"] * 3),
        }
    )
    rows["event_day"] = rows["event_time"].dt.date
    rows["relevant"] = 1.0
    truth = judged_users(rows[rows["event_day"] < pd.Timestamp("2024-01-02").date()], rows.iloc[[3]])
    assert truth == {"a": {"y"}}
    model = Recommender("popularity").fit(rows, pd.Timestamp("2024-01-03"))
    per_user, per_day = evaluate_days(model, rows, [pd.Timestamp("2024-01-03").date()], k=2)
    assert set(per_user["user"]) == {"d", "e", "f"} and (per_user["ndcg"] == 0).all()
    assert (per_user["segment"] == "new").all() and per_day["users"].iloc[0] == 3


def test_compare_rankings_feeds_the_same_gate() -> None:
    rng = np.random.default_rng(0)
    base = pd.DataFrame({"day": "2024-01-05", "user": [f"u{i}" for i in range(300)], "segment": "returning"})
    champ = base.assign(ndcg=rng.random(300) * 0.2, recall=0.0, ap=0.0, hit=0.0)
    same = compare_rankings(champ, champ, metric="ndcg", confidence=0.9)
    assert same.delta == 0 and same.ci_low <= 0 <= same.ci_high
    better = champ.assign(ndcg=champ["ndcg"] + 0.05)
    cmp = compare_rankings(better, champ, metric="ndcg", confidence=0.9)
    assert cmp.delta == pytest.approx(0.05) and cmp.ci_low > 0.04
    decision = decide_promotion(
        cmp, GatePolicy(min_delta=0.01, confidence=0.9, min_slice_rows=30), champion_is_baseline=False
    )
    assert decision.promote and decision.status == "promoted"
    # better overall (+0.2 on returning users, -0.1 on new ones): the new users' segment vetoes it
    much_better = champ.assign(ndcg=champ["ndcg"] + 0.2)
    worse_new = pd.concat([much_better, champ.assign(user=champ["user"] + "n", segment="new", ndcg=0.4)])
    ref = pd.concat([champ, champ.assign(user=champ["user"] + "n", segment="new", ndcg=0.5)])
    cmp2 = compare_rankings(worse_new, ref, metric="ndcg", confidence=0.9)
    d2 = decide_promotion(
        cmp2,
        GatePolicy(min_delta=0.0, confidence=0.9, max_slice_regression=0.03, min_slice_rows=30),
        champion_is_baseline=False,
    )
    assert cmp2.delta > 0 and not d2.promote and "slice user=new" in d2.reason


def test_decay_compares_the_window_with_the_hold_out_value() -> None:
    rows = pd.DataFrame({"day": pd.Timestamp("2024-01-05"), "user": [f"u{i}" for i in range(100)], "ndcg": 0.05})
    hit = ranking_decay(rows, metric="ndcg", reference_value=0.2, tolerance=0.02, window_days=7, min_users=50)
    assert hit.decay_detected and hit.window_value == pytest.approx(0.05)
    ok = ranking_decay(rows, metric="ndcg", reference_value=0.06, tolerance=0.02, window_days=7, min_users=50)
    assert not ok.decay_detected
    thin = ranking_decay(rows.head(10), metric="ndcg", reference_value=0.2, tolerance=0.02, window_days=7, min_users=50)
    assert not thin.decay_detected and "only 10 users" in thin.reason


def test_interaction_drift_by_hand() -> None:
    current = pd.DataFrame({"user": ["a", "b", "z", "z"], "item": ["x", "x", "y", "new"]})
    out = interaction_drift({"x": 2, "y": 2}, {"a": 1, "b": 1}, current)
    # p = (x .5, y .5, new 0), q = (x .5, y .25, new .25); JS distance base 2
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.25, 0.25])
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum([x * math.log2(x / y) for x, y in zip(a, b, strict=True) if x > 0]))  # noqa: E731
    assert out["item_popularity_js"] == pytest.approx(math.sqrt((kl(p, m) + kl(q, m)) / 2))
    assert out["new_item_share"] == 0.25 and out["new_user_share"] == 0.5 and out["interactions_per_user"] == 4 / 3


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_round_trips_through_skops_with_one_trusted_type(family: str) -> None:
    rows = _interactions(3)
    params = {"factors": 4, "iterations": 2} if family == "als" else {}
    model = Recommender(family, params, window_days=30, half_life_days=7).fit(rows, pd.Timestamp("2024-01-11"))
    blob = skops.io.dumps(model)
    assert set(skops.io.get_untrusted_types(data=blob)) <= set(SKOPS_TRUSTED_TYPES)
    back = skops.io.loads(blob, trusted=SKOPS_TRUSTED_TYPES)
    hist = history_matrix(model, rows, ["1", "2"])
    assert np.allclose(back.scores(hist), model.scores(hist))
    seen = list(rows.loc[rows["user"] == "1", "item"])
    assert recommend_for_user(back, seen, 5) == recommend_ids(model, rows, ["1"], 5)[0]
    assert isinstance(hist, sp.csr_matrix)


def test_a_family_without_hyper_parameters_is_tried_at_every_window_and_half_life() -> None:
    """Popularity costs a count: every window and half-life of it is tried, on top of the trials the other
    families share, so the sweep never misses its best window by the luck of the draw."""
    from mlops_assets.ml.ranking.sweep import RankingSpace, proposals

    space = RankingSpace.from_dict(
        {
            "families": {"popularity": {}, "ease": {"l2": [100.0, 500.0]}, "item_knn": {"neighbours": [20, 50]}},
            "windows": [None, 14, 30],
            "recency_half_lives": [None, 7],
            "trials": 4,
            "seed": 3,
        }
    )
    got = proposals(space)
    popular = [(w, h) for fam, _, w, h in got if fam == "popularity"]
    assert sorted(popular, key=repr) == sorted([(w, h) for w in (None, 14, 30) for h in (None, 7.0)], key=repr), (
        "all six, each once"
    )
    others = [fam for fam, *_ in got if fam != "popularity"]
    assert len(others) == 4 and set(others) == {"ease", "item_knn"}, "the trials go to the other families"
    assert got == proposals(space), "deterministic for a seed"


def test_a_blend_adds_recent_popularity_to_each_users_normalised_collaborative_scores() -> None:
    """score = collaborative score / the user's best + blend x (recent share / the top recent share); a user
    with no history gets the recent shares; blend 0 is the plain model; the blend survives skops."""
    rows = _interactions(4)
    cutoff = pd.Timestamp("2024-01-11")
    plain = Recommender("ease", {"l2": 10.0}).fit(rows, cutoff)
    blended = Recommender("ease", {"l2": 10.0, "blend": 2.0, "blend_window": 3}).fit(rows, cutoff)
    assert np.allclose(blended.weights, plain.weights)
    recent = rows[rows["event_time"] >= cutoff - pd.Timedelta(days=3)]["item"].value_counts()
    share = recent.reindex(blended.item_ids, fill_value=0).to_numpy() / recent.sum()
    assert np.allclose(blended.prior, share)
    users = sorted(rows["user"].unique())[:5]
    hist = history_matrix(plain, rows, users)
    base = plain.scores(hist) - 1e-6 * plain.popularity / plain.popularity.max()  # without the tie-break
    norm = base / base.max(axis=1, keepdims=True) + 2.0 * share / share.max()
    assert np.allclose(blended.scores(hist), norm + 1e-6 * share / share.max(), atol=1e-5)
    top = recommend_ids(blended, rows.iloc[0:0], ["someone new"], 3)[0]
    assert [recent.get(i, 0) for i in top] == sorted(recent, reverse=True)[:3]
    assert Recommender("ease", {"l2": 10.0, "blend": 0.0}).fit(rows, cutoff).prior.size == 0
    back = skops.io.loads(skops.io.dumps(blended), trusted=SKOPS_TRUSTED_TYPES)
    assert np.allclose(back.scores(hist), blended.scores(hist))


def test_the_sweep_tries_blends_on_its_best_collaborative_trial_after_the_same_drawn_trials() -> None:
    """`search.blends`: the drawn trials are those of the same space without blends; then the best
    collaborative trial is scored again with each weight and window, its fit reused, and a blend that wins
    validation is refit like any other winner."""
    from mlops_assets.ml.ranking.sweep import RankingSpace, run_ranking_sweep

    rows = _interactions(5, users=60, items=30, n=900)
    days = sorted(rows["event_day"].unique())
    raw = {"families": {"popularity": {}, "item_knn": {"neighbours": [5, 10]}}, "trials": 2, "seed": 1}
    kw = {"valid_days": days[-4:-2], "holdout_start": days[-2], "k": 5, "metric": "ndcg"}
    plain = run_ranking_sweep(rows, space=RankingSpace.from_dict(raw), **kw)  # type: ignore[arg-type]
    space = RankingSpace.from_dict({**raw, "blends": [1.0, 4.0], "blend_windows": [3]})
    blended = run_ranking_sweep(rows, space=space, **kw)  # type: ignore[arg-type]
    n = len(plain.trials)
    assert [(t.family, t.params, t.score) for t in blended.trials[:n]] == [
        (t.family, t.params, t.score) for t in plain.trials
    ]
    extra = blended.trials[n:]
    best_knn = max((t for t in plain.trials if t.family == "item_knn"), key=lambda t: t.score or 0.0)
    assert [(t.family, t.params) for t in extra] == [
        ("item_knn", {**best_knn.params, "blend": w, "blend_window": 3}) for w in (1.0, 4.0)
    ]
    # the reused fit scores exactly as a model fit with the blend from the start
    cut = pd.Timestamp(days[-4])
    base = Recommender("item_knn", best_knn.params).fit(rows, cut)
    fresh = Recommender("item_knn", {**best_knn.params, "blend": 4.0, "blend_window": 3}).fit(rows, cut)
    hist = history_matrix(base, rows, sorted(rows["user"].unique())[:8])
    assert np.allclose(base.blended(rows, 4.0, 3).scores(hist), fresh.scores(hist))
    assert (
        blended.best.number
        == max((t for t in blended.trials if t.score is not None), key=lambda t: (t.score, -t.number)).number
    )
    with pytest.raises(ValueError, match=r"search\.blends"):
        RankingSpace.from_dict({**raw, "blends": [0.0]})


def test_a_blend_takes_its_recent_shares_on_the_day_it_serves_and_can_recommend_items_born_after_its_fit() -> None:
    """A week after the fit, the blend scores with the shares of the week before the day served (a query, not
    a fit): a film born since and drawing everyone's attention is recommended, to returning and new users
    alike, by the batch lists and by the online path; without a day served the fit's own prior is used."""
    rows = _interactions(6)
    cutoff = pd.Timestamp("2024-01-11")
    model = Recommender("item_knn", {"neighbours": 5, "blend": 4.0, "blend_window": 3}).fit(rows, cutoff)
    rng = np.random.default_rng(0)
    later = pd.DataFrame(
        {
            "user": rng.integers(0, 40, 60).astype(str),
            "item": ["premiere"] * 60,
            "event_time": pd.Timestamp("2024-01-15") + pd.to_timedelta(rng.integers(0, 3 * 86400, 60), unit="s"),
        }
    ).drop_duplicates(["user", "item"])
    later["event_day"] = later["event_time"].dt.date
    before = pd.concat([rows, later], ignore_index=True)  # everything before the day served
    served = pd.Timestamp("2024-01-18")
    assert "premiere" not in set(model.item_ids)
    live = model.live_catalogue(before, served)
    assert live is not None and list(live.item_ids[: model.n_items]) == list(model.item_ids)
    recent = before[before["event_time"] >= served - pd.Timedelta(days=3)]["item"].value_counts()
    assert np.allclose(live.prior, recent.reindex(live.item_ids, fill_value=0).to_numpy() / recent.sum())
    fans = set(later["user"])
    returning = sorted(set(rows["user"]) - fans)[:3]
    lists = recommend_ids(model, before, [*returning, "someone new"], 5, as_of=served)
    assert all(lst[0] == "premiere" for lst in lists), lists
    assert all("premiere" not in lst for lst in recommend_ids(model, before, returning, 5))  # the fit's prior
    fan = sorted(fans)[0]
    assert "premiere" not in recommend_ids(model, before, [fan], 5, as_of=served)[0]  # seen: excluded
    for user in [*returning, fan, "someone new"]:
        seen = sorted(set(before.loc[before["user"] == user, "item"]))
        assert recommend_for_user(model, seen, 5, live) == recommend_ids(model, before, [user], 5, as_of=served)[0]
    assert Recommender("item_knn", {"neighbours": 5}).fit(rows, cutoff).live_catalogue(before, served) is None


@pytest.mark.parametrize(("window", "half_life"), [(None, None), (3, None), (5, 2.0)])
def test_popularity_serves_what_a_refit_that_morning_would(window: int | None, half_life: float | None) -> None:
    """A popularity model counts its window on the day served: a week-old fit lists exactly what a refit that
    morning lists, new films included, for batch lists and the online path; without a day it serves its fit."""
    rows = _interactions(7, n=600)
    served = pd.Timestamp("2024-01-09")
    old = Recommender("popularity", window_days=window, half_life_days=half_life).fit(rows, pd.Timestamp("2024-01-03"))
    fresh = Recommender("popularity", window_days=window, half_life_days=half_life).fit(rows, served)
    before = rows[rows["event_time"] < served]
    users = [*sorted(before["user"].unique())[:6], "someone new"]
    assert recommend_ids(old, before, users, 5, as_of=served) == recommend_ids(fresh, before, users, 5)
    live = old.live_catalogue(before, served)
    assert live is not None and list(live.item_ids) == list(fresh.item_ids)
    for user in users:
        seen = sorted(set(before.loc[before["user"] == user, "item"]))
        assert recommend_for_user(old, seen, 5, live) == recommend_for_user(fresh, seen, 5)
    assert recommend_ids(old, before, users, 5) != recommend_ids(fresh, before, users, 5)
