"""What /retrain may learn from, in the store: pictures rated well, but neither the pictures
nor the ratings of users who opted out; and a training run keeps its record when a picture it
used is deleted, pointing at it no more."""

from __future__ import annotations

from bot.learning_store import LearningStore
from bot.service.privacy import Privacy
from bot.store import NewImage, NewJob, Store
from engine.blobs import LocalBlobs
from engine.params import Params


async def picture(store: Store, blobs: LocalBlobs, user: int, prompt: str) -> int:
    job = await store.add_job(NewJob(user, Params(kind="txt2img", prompt=prompt, seed=1)))
    await store.mark_started(job, 64, 64, Params(kind="txt2img", prompt=prompt, seed=1))
    blob = blobs.put(prompt.encode(), ".png")
    [image] = await store.save_result(job, [NewImage(blob, 1, 64, 64)], 0.1, "base")
    return image.id


async def test_opted_out_users_pictures_and_ratings_are_left_out_and_runs_keep_their_record(
        tmp_path):
    blobs = LocalBlobs(tmp_path / "images" / "blobs")
    store = await Store.open(tmp_path / "canvas.db", blobs)
    learning = LearningStore(store)
    privacy = Privacy(store, blobs, tmp_path / "images" / "thumbs")
    try:
        ann, bob = [await store.ensure_user("telegram", str(n)) for n in (1, 2)]
        anns = await picture(store, blobs, ann, "a red circle")
        bobs = await picture(store, blobs, bob, "a blue square")
        bobs_too = await picture(store, blobs, bob, "a green triangle")
        await store.rate(anns, bob, 5)  # Ann's picture, rated by Bob
        await store.rate(bobs, ann, 5)  # Bob's picture, rated by Ann only
        await store.rate(bobs_too, bob, 5)
        await store.rate(bobs_too, ann, 1)
        everything = await learning.training_examples(4)
        assert [e.image_id for e in everything] == [anns, bobs]  # bobs_too averages 3

        await privacy.set_training(ann, False)
        examples = await learning.training_examples(4)
        # Ann's picture goes (hers), Bob's first goes (only her rating), and the third
        # counts Bob's rating alone.
        assert [(e.image_id, e.score, e.ratings) for e in examples] == [(bobs_too, 5.0, 1)]

        await privacy.set_training(ann, True)
        base = await store.ensure_model_version("base", "shapes")
        run = await learning.start_run(
            version="v1", base_model="shapes", parent_id=base, user_id=bob, steps=10, rank=4,
            min_score=4, examples=everything, origin={})
        await privacy.delete(anns, ann, admin=False)
        assert await learning.run_images(run) == [(None, 5.0, 1), (bobs, 5.0, 1)]
        assert (await learning.run(run)).images_used == 2
    finally:
        await store.close()
