"""Frame sampling on real files: every codec, both backends, and the files that go wrong."""

from __future__ import annotations

import tracemalloc

import av
import numpy as np
import pytest
from videos import H264, HEVC, VFR_TIMES, avi_claiming, pattern_clip, truncated, vfr

from vtt.synthetic import write_video
from vtt.video import Sampling, VideoError, read_frames, read_timed_frames, sample_frames

BACKENDS = ["opencv", "pyav"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    made = {
        "mp4v": write_video(folder / "red-right.mp4", "red", "right", frames=24),
        "mjpg": write_video(folder / "red-right.avi", "red", "right", frames=24),
        "vp9": write_video(folder / "red-right.webm", "red", "right", frames=24),
        "h264": pattern_clip(folder / "h264.mp4", H264),
        "hevc": pattern_clip(folder / "hevc.mp4", HEVC, seconds=2),
        "vfr": vfr(folder / "vfr.mp4"),
        "overstated": avi_claiming(folder / "overstated.avi", claimed=100),
        "understated": avi_claiming(folder / "understated.avi", claimed=12),
        "one-frame": write_video(folder / "one.mp4", "blue", "up", frames=1),
    }
    made["truncated-index"] = truncated(made["mp4v"], folder / "truncated-index.mp4")  # moov at the end: lost
    made["truncated-data"] = truncated(made["h264"], folder / "truncated-data.mp4")  # moov first: data lost
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    made["empty"], made["text"] = folder / "empty.mp4", folder / "text.mp4"
    return made


@pytest.mark.parametrize("codec", ["mp4v", "mjpg", "vp9", "h264", "hevc"])
def test_both_backends_give_the_same_frames_for_each_codec(clips, codec):
    opencv = read_timed_frames(clips[codec], Sampling(num_frames=5))
    pyav = read_timed_frames(clips[codec], Sampling(num_frames=5, backend="pyav"))
    assert len(opencv) == len(pyav) == 5
    assert [round(t, 3) for t, _ in opencv] == [round(t, 3) for t, _ in pyav]
    for (_, a), (_, b) in zip(opencv, pyav, strict=True):
        assert a.shape == b.shape and a.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


def test_frames_are_rgb(clips):
    frame = sample_frames(clips["mjpg"], 1)[0]
    red, green, blue = np.asarray(frame).reshape(-1, 3).max(axis=0)
    assert frame.mode == "RGB" and red > 200 and green < 60 and blue < 60  # the square is red


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_frames_are_the_middles_of_equal_spans(clips, backend):
    # 100 frames at 25 fps, 5 spans of 20 frames: the middles are frames 10, 30, 50, 70, 90.
    times = [t for t, _ in read_timed_frames(clips["h264"], Sampling(num_frames=5, backend=backend))]
    assert times == pytest.approx([0.4, 1.2, 2.0, 2.8, 3.6], abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fps_sampling_takes_frames_at_the_rate_and_max_frames_spreads_them(clips, backend):
    two_a_second = read_timed_frames(clips["h264"], Sampling(fps=2, backend=backend))
    assert len(two_a_second) == 8  # 4 s at 2 fps
    assert np.diff([t for t, _ in two_a_second]) == pytest.approx([0.48, 0.52] * 3 + [0.48], abs=0.05)
    capped = [t for t, _ in read_timed_frames(clips["h264"], Sampling(fps=2, max_frames=3, backend=backend))]
    assert len(capped) == 3 and capped[0] < 1 and capped[-1] > 3  # still covers the clip


@pytest.mark.parametrize("backend", BACKENDS)
def test_segment_keeps_frames_inside_it(clips, backend):
    times = [
        t for t, _ in read_timed_frames(clips["h264"], Sampling(num_frames=4, start=1.0, end=2.0, backend=backend))
    ]
    assert times == pytest.approx([1.12, 1.36, 1.6, 1.84], abs=1e-3)
    with pytest.raises(VideoError, match="outside the clip"):
        read_frames(clips["h264"], Sampling(start=10, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_is_sampled_on_presentation_time(clips, backend):
    times = [t for t, _ in read_timed_frames(clips["vfr"], Sampling(num_frames=5, backend=backend))]
    with av.open(str(clips["vfr"])) as container:  # the truth: every packet's presentation time
        stream = container.streams.video[0]
        truth = sorted(float(p.pts * stream.time_base) for p in container.demux(stream) if p.pts is not None)
    assert len(truth) == len(VFR_TIMES) and truth[:20] == pytest.approx(VFR_TIMES[:20], abs=0.01)
    # The clip ends one mean frame after its last; each pick is the frame on screen at the middle of its
    # span. Sampling by frame index would put 2 of the 5 picks in the first 2 seconds.
    end = truth[-1] + truth[-1] / (len(truth) - 1)
    expected = [max(t for t in truth if t <= (k + 0.5) * end / 5) for k in range(5)]
    assert times == pytest.approx(expected, abs=1e-3)
    assert sum(t < 2 for t in times) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_container_overstating_its_frame_count_is_counted_by_decoding(clips, backend):
    honest = read_timed_frames(clips["mjpg"], Sampling(num_frames=5, backend=backend))
    lying = read_timed_frames(clips["overstated"], Sampling(num_frames=5, backend=backend))
    assert [t for t, _ in lying] == pytest.approx([t for t, _ in honest])  # over its 24 real frames, not 100
    assert len(read_frames(clips["overstated"], Sampling(fps=2, backend=backend))) == 4  # 24 frames at 12 fps


@pytest.mark.parametrize("backend", BACKENDS)
def test_container_understating_its_frame_count_is_sampled_to_its_real_end(clips, backend):
    # 24 frames at 12 fps whose headers claim 12: trusting them would sample only the first second.
    honest = read_timed_frames(clips["mjpg"], Sampling(num_frames=4, backend=backend))
    lying = read_timed_frames(clips["understated"], Sampling(num_frames=4, backend=backend))
    assert [t for t, _ in lying] == pytest.approx([0.25, 0.75, 1.25, 1.75])
    assert [t for t, _ in lying] == pytest.approx([t for t, _ in honest])


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_data_samples_only_the_frames_that_decode(clips, backend):
    times = [t for t, _ in read_timed_frames(clips["truncated-data"], Sampling(num_frames=5, backend=backend))]
    assert len(times) == 5 and max(times) < 2.0  # half of a 4 s file


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("clip", "cause"),
    [("truncated-index", "cannot open"), ("empty", "empty"), ("text", "cannot open"), ("missing", "no such file")],
)
def test_unreadable_files_raise_one_video_error_naming_the_file(clips, tmp_path, backend, clip, cause):
    path = clips.get(clip, tmp_path / "missing.mp4")
    with pytest.raises(VideoError, match=cause) as caught:
        read_frames(path, Sampling(backend=backend))
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_frame_clip_gives_its_one_frame(clips, backend):
    assert len(read_frames(clips["one-frame"], Sampling(num_frames=5, backend=backend))) == 1
    assert len(read_frames(clips["one-frame"], Sampling(fps=4, backend=backend))) == 1


def test_frames_are_resized_to_longest_side_or_exact_size(clips):
    [longest] = read_frames(clips["h264"], Sampling(num_frames=1, size=64))
    [exact] = read_frames(clips["h264"], Sampling(num_frames=1, size=(30, 20)))
    assert longest.shape == (48, 64, 3) and exact.shape == (20, 30, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_4k_clip_is_sampled_without_holding_its_frames(tmp_path, backend):
    clip = write_video(tmp_path / "4k.mp4", "green", "down", frames=12, size=(3840, 2160))
    full_frame = 3840 * 2160 * 3
    tracemalloc.start()
    try:
        frames = read_frames(clip, Sampling(num_frames=8, size=224, backend=backend))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(frames) == 8 and frames[0].shape == (126, 224, 3)
    assert peak < 3 * full_frame, f"peak {peak / 2**20:.0f} MiB: decoded frames were kept"


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="backend 'decord'"):
        Sampling(backend="decord")
    with pytest.raises(ValueError, match="end 1 must be after its start 2"):
        Sampling(start=2, end=1)
