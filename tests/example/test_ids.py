"""Every example route that takes an id answers 400 for an id no Datastore key can have, never a 5xx."""
from __future__ import annotations

import pytest

#: Over the 1,500-byte limit of a key name (counted in bytes: 800 "é" are 1,600), reserved, empty.
IMPOSSIBLE_IDS = ["x" * 1600, "é" * 800, "__key__"]


@pytest.mark.parametrize("bad", IMPOSSIBLE_IDS)
@pytest.mark.parametrize("route", ["/reindex/status/{}", "/tour/watch/{}", "/tour/watch?token={}"])
def test_an_id_that_cannot_be_a_key_is_a_400(signed_in, route, bad):
    response = signed_in.get(route.format(bad))
    assert response.status_code == 400, response.get_data(as_text=True)[:300]


def test_a_reindex_run_that_does_not_exist_is_still_a_404(signed_in):
    assert signed_in.get("/reindex/status/" + "0" * 32).status_code == 404
