"""Frame sampling on real files: every codec, both backends, and the files that go wrong."""

from __future__ import annotations

import tracemalloc

import av
import cv2
import numpy as np
import pytest
from videos import (
    H264,
    H264_STREAM,
    HEVC,
    VFR_TIMES,
    av1,
    avi_claiming,
    pattern_clip,
    random_bytes,
    rotated,
    truncated,
    ts_cut,
    vfr,
    zero_frames,
)

from vtt.data.synthetic import write_video
from vtt.data.video import Sampling, VideoError, read_frames, read_timed_frames, sample_frames

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
        "av1": av1(folder / "av1.mp4"),
        "raw-h264": pattern_clip(folder / "raw.h264", H264_STREAM),
        "ts": pattern_clip(folder / "h264.ts", H264_STREAM),
        "ts-gop50": pattern_clip(folder / "gop50.ts", ["-c:v", "libx264", "-g", "50", "-pix_fmt", "yuv420p"]),
    }
    made["truncated-index"] = truncated(made["mp4v"], folder / "truncated-index.mp4")  # moov at the end: lost
    made["truncated-data"] = truncated(made["h264"], folder / "truncated-data.mp4")  # moov first: data lost
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    made["empty"], made["text"] = folder / "empty.mp4", folder / "text.mp4"
    return made


def assert_same_frames(first, second, tolerance=1.0):
    """Two read_timed_frames results: the same times, shapes, and pixels within `tolerance` on average."""
    assert [round(t, 3) for t, _ in first] == [round(t, 3) for t, _ in second]
    for (_, a), (_, b) in zip(first, second, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
        assert np.abs(a.astype(int) - b.astype(int)).mean() < tolerance


def decoded_times(path):
    """The truth: every frame PyAV's decoder gives, by its presentation time from the stream's start."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float((f.pts - stream.start_time) * stream.time_base) for f in container.decode(stream)]


@pytest.mark.parametrize("codec", ["mp4v", "mjpg", "vp9", "h264", "hevc", "av1"])
def test_both_backends_give_the_same_frames_for_each_codec(clips, codec):
    opencv = read_timed_frames(clips[codec], Sampling(num_frames=5))
    pyav = read_timed_frames(clips[codec], Sampling(num_frames=5, backend="pyav"))
    assert len(opencv) == len(pyav) == 5
    assert_same_frames(opencv, pyav)


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


def test_clip_the_chosen_backend_cannot_decode_is_read_by_the_other(clips):
    capture = cv2.VideoCapture(str(clips["av1"]), cv2.CAP_FFMPEG)
    assert not capture.read()[0], "OpenCV decodes AV1 here: the fallback is not exercised"
    capture.release()
    opencv = read_timed_frames(clips["av1"], Sampling(num_frames=5, backend="opencv"))
    assert_same_frames(opencv, read_timed_frames(clips["av1"], Sampling(num_frames=5, backend="pyav")), 0.01)
    # And they are the pattern's frames at those times, as the H.264 clip of the same pattern shows them.
    assert_same_frames(opencv, read_timed_frames(clips["h264"], Sampling(num_frames=5)), 3.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_file_neither_backend_reads_names_both_causes(clips, backend):
    other = "pyav" if backend == "opencv" else "opencv"
    with pytest.raises(VideoError) as caught:
        read_frames(clips["text"], Sampling(backend=backend))
    message = str(caught.value)
    assert message.startswith(f"{clips['text']}: neither backend can read it ({backend}: ")
    assert f"; {other}, tried next: " in message
    assert "OpenCV cannot open it" in message and "PyAV cannot open it" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_h264_stream_without_timestamps_gives_the_frames_of_its_clip(clips, backend):
    with av.open(str(clips["raw-h264"])) as container:  # the case: an elementary stream, no pts nor dts
        assert all(p.pts is None and p.dts is None for p in container.demux(container.streams.video[0]))
    raw = read_timed_frames(clips["raw-h264"], Sampling(num_frames=5, backend=backend))
    # Frame n at n / 25 fps, the rate its SPS declares: the same picks, and pixels, as the same pattern in mp4.
    assert [t for t, _ in raw] == pytest.approx([0.4, 1.2, 2.0, 2.8, 3.6], abs=1e-3)
    assert_same_frames(raw, read_timed_frames(clips["h264"], Sampling(num_frames=5, backend=backend)), 1.0)
    assert len(read_frames(clips["raw-h264"], Sampling(fps=2, backend=backend))) == 8  # 100 frames at 25 fps


def test_raw_h264_stream_gives_the_same_frames_from_both_backends(clips):
    assert_same_frames(
        read_timed_frames(clips["raw-h264"], Sampling(num_frames=7, start=0.5, end=3.0)),
        read_timed_frames(clips["raw-h264"], Sampling(num_frames=7, start=0.5, end=3.0, backend="pyav")),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_ts_cut_inside_a_group_of_pictures_is_sampled_from_its_first_decodable_frame(clips, tmp_path, backend):
    # Keyframes 2 s apart; the cut leaves 1.7 s of frames whose keyframe is gone, which never decode.
    clip = ts_cut(clips["ts-gop50"], tmp_path / "cut.ts", keep_from=0.1)
    truth = decoded_times(clip)
    assert truth[0] > 1.5
    end = truth[-1] + (truth[-1] - truth[0]) / (len(truth) - 1)
    expected = [max(t for t in truth if t <= truth[0] + (k + 0.5) * (end - truth[0]) / 5 + 1e-6) for k in range(5)]
    frames = read_timed_frames(clip, Sampling(num_frames=5, backend=backend))
    assert [t for t, _ in frames] == pytest.approx(expected, abs=1e-3)  # from 0, 2 picks fell on the first frame
    other = read_timed_frames(clip, Sampling(num_frames=5, backend="pyav" if backend == "opencv" else "opencv"))
    assert_same_frames(frames, other)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gap_in_the_decoded_frames_still_gives_as_many_frames_as_asked(clips, tmp_path, backend):
    # Cut inside a group of pictures: the B-frames before the lost P-frame never decode, leaving a gap.
    clip = ts_cut(clips["ts"], tmp_path / "cut.ts", keep_to=0.15)
    truth = [round(t, 3) for t in decoded_times(clip)]
    end = truth[-1] + (truth[-1] - truth[0]) / (len(truth) - 1)
    on_screen = [max(t for t in truth if t <= (k + 0.5) * end / 5 + 1e-6) for k in range(5)]
    assert len(truth) > 5 and len(set(on_screen)) < 5  # the case: two span middles on one frame
    times = [round(t, 3) for t, _ in read_timed_frames(clip, Sampling(num_frames=5, backend=backend))]
    assert times == sorted(set(times)) and len(times) == 5
    assert set(on_screen) <= set(times) <= set(truth)  # the repeat moved to a frame of its own


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_both_backends_turn_frames_by_the_display_matrix(clips, tmp_path, degrees):
    clip = rotated(clips["h264"], tmp_path / f"rotated{degrees}.mp4", degrees)
    opencv = read_timed_frames(clip, Sampling(num_frames=3))
    pyav = read_timed_frames(clip, Sampling(num_frames=3, backend="pyav"))
    assert_same_frames(opencv, pyav, 0.01)
    # Turned counter-clockwise by `degrees`, as ffmpeg shows the clip: 240 x 320 on its side.
    upright = read_timed_frames(clips["h264"], Sampling(num_frames=3, backend="pyav"))
    assert_same_frames(pyav, [(t, np.rot90(frame, degrees // 90)) for t, frame in upright], 0.01)


def test_segment_past_an_understated_end_is_read_from_the_real_clip(clips):
    # Headers claim 1 s (12 frames at 12 fps); the clip is 2 s: a segment from 1.5 s is inside it.
    times = [t for t, _ in read_timed_frames(clips["understated"], Sampling(num_frames=3, start=1.5))]
    assert times == pytest.approx([19 / 12, 21 / 12, 23 / 12])  # the middles of [1.5, 2] in thirds


@pytest.fixture(scope="module")
def damaged(clips, tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    return [
        random_bytes(folder / "random.mp4"),
        random_bytes(folder / "random.h264", seed=1),
        truncated(clips["h264"], folder / "h264-start.mp4", keep=0.05),
        truncated(clips["h264"], folder / "h264-most.mp4", keep=0.8),
        truncated(clips["mp4v"], folder / "mp4v-most.mp4", keep=0.9),
        truncated(clips["raw-h264"], folder / "raw-half.h264"),
        truncated(clips["av1"], folder / "av1-half.mp4"),
        clips["text"],
        zero_frames(folder / "zero-frames.avi"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_files_give_frames_or_one_video_error(damaged, backend):
    # The data pipeline catches VideoError only: any other exception would stop a training run.
    for path in damaged:
        try:
            frames = read_timed_frames(path, Sampling(num_frames=5, backend=backend))
        except VideoError as err:
            assert str(err).startswith(f"{path}: "), err
            continue
        times = [t for t, _ in frames]
        assert 1 <= len(frames) <= 5 and times == sorted(set(times)), path
        assert all(frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 for _, frame in frames)
        other = read_timed_frames(path, Sampling(num_frames=5, backend="pyav" if backend == "opencv" else "opencv"))
        assert_same_frames(frames, other)
