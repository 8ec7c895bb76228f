def test_assess_runs(tiny_model, photos):
    scores = tiny_model.assess(photos[:2])
    assert scores.level_probs.shape == (2, 4)
    assert scores.type_probs.shape == (2, 7)
