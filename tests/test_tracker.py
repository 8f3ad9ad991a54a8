"""People counting on synthetic sequences of moving faces."""

from webapp.tracker import FaceTracker

FPS = 10.0


def walk(start, end, frames, size=60):
    """Boxes of a face moving in a straight line."""
    (x0, y0), (x1, y1) = start, end
    return [(x0 + (x1 - x0) * i / (frames - 1), y0 + (y1 - y0) * i / (frames - 1)) for i in range(frames)]


def run(tracker, timeline):
    """timeline: list of frames, each a list of (x, y, label, score). Returns ended people."""
    people = []
    ids_per_frame = []
    for i, faces in enumerate(timeline):
        boxes = [(x, y, x + 60, y + 60) for x, y, _, _ in faces]
        ids, ended, _ = tracker.update(boxes, [f[2] for f in faces], [f[3] for f in faces], now=i / FPS)
        ids_per_frame.append(ids)
        people += ended
    people += tracker.flush()
    return people, ids_per_frame


def counts(people):
    out = {}
    for p in people:
        out[p.label] = out.get(p.label, 0) + 1
    return out


def test_people_walking_past_are_counted_once_each():
    tracker = FaceTracker()
    a = walk((0, 100), (580, 100), 30)
    b = walk((580, 300), (0, 300), 30)
    timeline = []
    for i in range(45):
        frame = []
        if i < 30:
            frame.append((*a[i], "with_mask", 0.9))
        if 10 <= i < 40:
            frame.append((*b[i - 10], "without_mask", 0.95))
        timeline.append(frame)
    people, _ = run(tracker, timeline)
    assert counts(people) == {"with_mask": 1, "without_mask": 1}


def test_two_faces_that_cross_keep_their_identities():
    tracker = FaceTracker()
    a = walk((0, 200), (500, 200), 25)
    b = walk((500, 210), (0, 210), 25)
    timeline = [[(*a[i], "with_mask", 0.9), (*b[i], "mask_incorrect", 0.9)] for i in range(25)]
    people, ids = run(tracker, timeline)
    assert counts(people) == {"with_mask": 1, "mask_incorrect": 1}
    # the id that started on the left ends on the right
    assert ids[0][0] == ids[-1][0] and ids[0][1] == ids[-1][1]


def test_short_disappearance_is_the_same_person_and_a_later_return_is_a_new_visit():
    tracker = FaceTracker(max_gap_s=1.0)
    path = walk((0, 100), (375, 100), 25)
    timeline = [[(*path[i], "without_mask", 0.9)] for i in range(10)]
    timeline += [[] for _ in range(5)]  # hidden for 0.5 s while walking (someone passes in front)
    timeline += [[(*path[i], "without_mask", 0.9)] for i in range(15, 25)]
    timeline += [[] for _ in range(30)]  # leaves for 3 s
    timeline += [[(*path[i], "without_mask", 0.9)] for i in range(10)]  # comes back
    people, _ = run(tracker, timeline)
    assert counts(people) == {"without_mask": 2}


def test_one_bad_frame_is_not_a_person_and_votes_decide_the_label():
    tracker = FaceTracker(min_frames=3)
    path = walk((0, 0), (200, 0), 12)
    timeline = [[(*path[i], "with_mask", 0.9)] for i in range(12)]
    timeline[5] = [(*path[5], "without_mask", 0.99)]  # one misclassified frame
    timeline.append([(400, 400, "without_mask", 0.6)])  # a one-frame false detection
    people, _ = run(tracker, timeline)
    assert counts(people) == {"with_mask": 1}


def test_confirmation_is_reported_once():
    tracker = FaceTracker(min_frames=3)
    confirmed = []
    for i in range(10):
        _, _, new = tracker.update([(10 + i, 10, 70 + i, 70)], ["without_mask"], [0.9], now=i / FPS)
        confirmed += new
    assert len(confirmed) == 1 and confirmed[0].label == "without_mask"


def test_a_track_that_is_never_sure_is_never_a_person():
    """A head turned away for its whole visit: tracked (ids) but never counted or alerted."""
    tracker = FaceTracker(min_frames=3)
    confirmed = []
    for i, (x, y) in enumerate(walk((0, 100), (500, 100), 20)):
        ids, ended, new = tracker.update([(x, y, x + 60, y + 60)], ["without_mask"], [0.97], now=i / FPS,
                                         unsure=[True])
        assert ids[0] > 0 and not ended
        confirmed += new
    assert confirmed == [] and tracker.flush() == []


def test_unsure_frames_do_not_vote_and_one_sure_frame_decides():
    tracker = FaceTracker(min_frames=3)
    path = walk((0, 100), (500, 100), 10)
    confirmed_at = []
    for i, (x, y) in enumerate(path):
        sure = i == 6  # one confident with_mask frame among confident-looking "no mask" guesses
        label, score = ("with_mask", 0.8) if sure else ("without_mask", 0.99)
        _, _, new = tracker.update([(x, y, x + 60, y + 60)], [label], [score], now=i / FPS, unsure=[not sure])
        confirmed_at += [i for _ in new]
    assert confirmed_at == [6]  # a person (and a possible alert) only once a frame was sure
    people = tracker.flush()
    assert [(p.label, p.frames) for p in people] == [("with_mask", 10)]


def test_a_clock_set_back_ends_the_tracks_in_view_once():
    """The server's clock is the wall clock: set back an hour, the people in view are counted
    then (not an hour later) and new faces start new tracks."""
    tracker = FaceTracker()
    for i in range(5):
        _, ended, _ = tracker.update([(100, 100, 160, 160)], ["with_mask"], [0.9], now=1000 + i / FPS)
        assert ended == []
    _, ended, _ = tracker.update([(400, 100, 460, 160)], ["without_mask"], [0.9], now=1000 - 3600)
    assert [p.label for p in ended] == ["with_mask"]
    assert [t.label for t in tracker.tracks] == ["without_mask"]


def test_a_face_in_view_while_the_clock_is_set_back_keeps_its_track():
    tracker = FaceTracker()
    x = [100 + 5 * i for i in range(10)]  # walking 50 px/s
    ids = [tracker.update([(x[i], 100, x[i] + 60, 160)], ["with_mask"], [0.9], now=1000 + i / FPS)[0]
           for i in range(5)]
    ids += [tracker.update([(x[i], 100, x[i] + 60, 160)], ["with_mask"], [0.9], now=1000.2 + (i - 5) / FPS)[0]
            for i in range(5, 10)]  # set back 0.3 s (under the track gap): the same person
    assert len({i for (i,) in ids}) == 1
    assert counts(tracker.flush()) == {"with_mask": 1}
