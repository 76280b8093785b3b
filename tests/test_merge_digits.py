"""Model soups on scikit-learn's bundled digits: fine-tunes of one pre-trained MLP, merged four ways.

Several fine-tunes (different seeds and learning rates) start from one pre-trained model; the
uniform soup, the greedy soup (ranked and scored on a validation split) and the output ensemble
and vote are committed and evaluated on a held-out test split.
"""

from __future__ import annotations

import numpy as np
import pytest

FINE_TUNES = [(1, 1e-3), (2, 3e-3), (3, 1e-3), (4, 1e-2)]  # (seed, learning rate)


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(np.asarray(model(x, training=False)), axis=-1) == y))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=1000, random_state=0, stratify=y)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, train_size=0.5, random_state=0, stratify=y_rest)
    return x_train, y_train, x_val, y_val, x_test, y_test


@pytest.fixture(scope="module")
def soup_store(tmp_path_factory, digits):
    """A store with a pre-trained MLP and four fine-tunes of it (val_accuracy recorded)."""
    import keras

    from mvc_magics import Repo

    x_train, y_train, x_val, y_val, _, _ = digits
    repo = Repo(tmp_path_factory.mktemp("digits") / ".mvc")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(x_train[:300], y_train[:300], epochs=3, batch_size=64, verbose=0)
    pre = repo.commit(model, "mlp", message="pre-trained", tags=["pretrained"],
                      metrics={"val_accuracy": accuracy(model, x_val, y_val)})
    fine_tunes = []
    for seed, lr in FINE_TUNES:
        keras.utils.set_random_seed(seed)
        tuned = repo.checkout("pretrained", name="mlp")  # rebuilt from the store: same start
        tuned.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
        tuned.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
        fine_tunes.append(repo.commit(tuned, "mlp", message=f"fine-tune seed={seed} lr={lr}",
                                      metrics={"val_accuracy": accuracy(tuned, x_val, y_val)},
                                      params={"seed": seed, "lr": lr}, parents=[pre.id]))
    yield repo, fine_tunes
    repo.close()


def test_soups_and_ensembles_on_digits(soup_store, digits):
    repo, fine_tunes = soup_store
    _, _, x_val, y_val, x_test, y_test = digits
    ids = [v.id for v in fine_tunes]

    def val_accuracy(model):
        return accuracy(model, x_val, y_val)

    singles = {v.id: accuracy(repo.checkout(v.id, name="mlp"), x_test, y_test) for v in fine_tunes}
    best_single = max(fine_tunes, key=lambda v: v.metrics["val_accuracy"])

    uniform = repo.merge(ids, name="mlp", eval_fn=val_accuracy)
    greedy = repo.merge(ids, name="mlp", method="greedy", eval_fn=val_accuracy)
    ensemble = repo.merge(ids, name="mlp", method="ensemble", eval_fn=val_accuracy)

    # Greedy soup: its validation score is never below the best single ingredient (by construction).
    assert greedy.report.score >= max(v.metrics["val_accuracy"] for v in fine_tunes)
    assert greedy.report.ingredients[0] == best_single.id
    assert set(greedy.report.ingredients) <= set(ids)
    steps = greedy.extra["merge"]["steps"]
    assert len(steps) == len(ids) and steps[0]["accepted"]
    assert [s["id"] for s in steps if s["accepted"]] == greedy.report.ingredients
    assert greedy.metrics["val_accuracy"] == pytest.approx(greedy.report.score)
    assert set(greedy.parents) == set(ids)
    # The committed greedy soup is exactly the uniform average of its ingredients.
    if len(greedy.report.ingredients) > 1:
        assert repo.merge(greedy.report.ingredients, name="mlp").id == greedy.id

    results = {
        "best single (val)": singles[best_single.id],
        "uniform soup": accuracy(repo.checkout(uniform.id, name="mlp"), x_test, y_test),
        "greedy soup": accuracy(repo.checkout(greedy.id, name="mlp"), x_test, y_test),
        "ensemble": accuracy(repo.checkout(ensemble.id, name=ensemble.name), x_test, y_test),
    }
    print("\ndigits test accuracy:", {k: round(v, 4) for k, v in results.items()},
          f"greedy ingredients {len(greedy.report.ingredients)}/{len(ids)}")
    assert min(results.values()) > 0.8  # all four are working classifiers on the held-out split


def test_ensemble_is_the_mean_of_member_outputs_and_writes_no_member_tensor(soup_store, digits):
    repo, fine_tunes = soup_store
    x_test = digits[4]
    members = [repo.checkout(v.id, name="mlp") for v in fine_tunes]
    ensemble = repo.merge([v.id for v in fine_tunes], name="mlp", method="ensemble")
    assert ensemble.name == "mlp_ensemble" and set(ensemble.parents) == {v.id for v in fine_tunes}
    assert ensemble.stats.bytes_written == 0  # every member tensor was already stored
    member_hashes = {e.hash for v in fine_tunes for e in repo.manifest(v.id)}
    assert {e.hash for e in repo.manifest(ensemble.id)} <= member_hashes
    rebuilt = repo.checkout(ensemble.id, name="mlp_ensemble")  # from the stored structure alone
    expected = np.mean([np.asarray(m(x_test, training=False)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(rebuilt(x_test, training=False)), expected, rtol=1e-5, atol=1e-6)

    weighted = repo.merge([v.id for v in fine_tunes], weights=[3, 1, 0, 0], name="mlp", method="ensemble")
    expected = (3 * np.asarray(members[0](x_test)) + np.asarray(members[1](x_test))) / 4
    got = np.asarray(repo.checkout(weighted.id, name="mlp_ensemble")(x_test))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_vote_is_the_per_sample_majority(soup_store, digits):
    repo, fine_tunes = soup_store
    x_test = digits[4]
    members = [repo.checkout(v.id, name="mlp") for v in fine_tunes[:3]]
    vote = repo.merge([v.id for v in fine_tunes[:3]], name="mlp", method="vote")
    assert vote.name == "mlp_vote" and vote.stats.bytes_written == 0
    rebuilt = repo.checkout(vote.id, name="mlp_vote")  # the vote layer is the package's own, trusted
    shares = np.asarray(rebuilt(x_test))
    labels = np.stack([np.argmax(np.asarray(m(x_test)), axis=-1) for m in members])  # (members, samples)
    majority = np.array([np.argmax(np.bincount(column, minlength=10)) for column in labels.T])
    np.testing.assert_array_equal(np.argmax(shares, axis=-1), majority)
    counts = np.stack([np.bincount(column, minlength=10) for column in labels.T]) / 3
    np.testing.assert_allclose(shares, counts, atol=1e-6)


def test_greedy_can_rank_by_a_stored_metric(soup_store, digits):
    repo, fine_tunes = soup_store
    _, _, x_val, y_val, _, _ = digits
    greedy = repo.merge([v.id for v in fine_tunes], name="mlp", method="greedy", metric="val_accuracy",
                        eval_fn=lambda model: accuracy(model, x_val, y_val), score_name="val_accuracy")
    ranking = greedy.report.ranking  # (the content may already be stored by another test: report is fresh)
    assert greedy.report.ranked_by == "val_accuracy:max"
    stored = [v.metrics["val_accuracy"] for v in sorted(fine_tunes, key=lambda v: -v.metrics["val_accuracy"])]
    assert [score for _, score in ranking] == pytest.approx(stored)
