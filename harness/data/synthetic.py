"""The built-in synthetic Carvana-like data set: segbench's default data, so nothing needs a download.

Cars are small polyhedra (body, cabin, wheels, mirrors, antenna, sometimes roof rails or a spoiler)
rendered with a z-buffer on a supersampled canvas, on a turntable in a studio: 16 views per car, as
in Carvana, so the 16 images of a car share its colour and shape and folds must split by car id.
The image is the area-averaged canvas (antialiased edges); the mask is that same coverage binarised
at the output resolution, so image and mask always agree. Hard cases are built in on purpose, since
an easy set would rank every recipe at Dice 0.999: paint close to the studio colour, specular
highlights, windows that show the background, thin parts (antennas, mirrors, rails) whose borders
decide the last digits of Dice, soft shadows that are not car, noise and JPEG compression.

Everything is drawn from one seed through a ``SeedSequence`` child per car, so a car is the same
whatever the number of cars or worker processes: same parameters, byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from types import MappingProxyType

import cv2
import numpy as np
from PIL import Image

from harness.data.rle import encode
from harness.errors import BenchError

VIEWS = 16
# Bump when the generator's output changes, so cached folders from an older generator are not reused.
GENERATOR_VERSION = 1
MIN_SIDE = 32

# (make, model, body style); the style chooses the proportions, so metadata.csv matches the pictures.
MODELS: tuple[tuple[str, str, str], ...] = (
    ("Acura", "MDX", "suv"), ("Audi", "A4", "sedan"), ("BMW", "3 Series", "sedan"),
    ("Chevrolet", "Cruze", "sedan"), ("Chevrolet", "Tahoe", "suv"), ("Ford", "Focus", "hatch"),
    ("Ford", "Explorer", "suv"), ("Honda", "Civic", "sedan"), ("Honda", "Fit", "hatch"),
    ("Honda", "CR-V", "suv"), ("Hyundai", "Elantra", "sedan"), ("Jeep", "Grand Cherokee", "suv"),
    ("Kia", "Soul", "hatch"), ("Mazda", "Mazda3", "hatch"), ("Mercedes-Benz", "C-Class", "sedan"),
    ("Nissan", "Altima", "sedan"), ("Nissan", "Rogue", "suv"), ("Toyota", "Camry", "sedan"),
    ("Toyota", "Prius", "hatch"), ("Toyota", "RAV4", "suv"), ("Volkswagen", "Golf", "hatch"),
    ("Volkswagen", "Jetta", "sedan"),
)
TRIM1 = ("Base", "S", "SE", "LE", "LX", "EX", "Sport", "Limited", "Touring", "Premium")
TRIM2 = MappingProxyType({"sedan": ("4dr Sedan", "4dr Sedan AWD"), "hatch": ("4dr Hatchback", "2dr Hatchback"),
                          "suv": ("4dr SUV", "AWD 4dr SUV")})
PAINTS = ((235, 235, 232), (190, 192, 195), (120, 122, 126), (25, 26, 30), (160, 20, 25),
          (25, 50, 120), (15, 30, 60), (30, 80, 50), (200, 185, 150), (220, 180, 30), (90, 40, 30))
LIGHT = (0.45, 0.8, 0.4)  # studio key light direction (normalised where used)

Colour = tuple[float, float, float]
EdgeStyle = Callable[[np.ndarray], tuple[Colour, bool]]


@dataclass(frozen=True)
class Face:
    """A planar polygon of the car (car coordinates: x to the front, y up, z across; length 1)."""

    points: np.ndarray  # (n, 3)
    normal: np.ndarray  # (3,), outward
    colour: Colour
    paint: bool  # body paint: gets the specular streaks
    decals: tuple[tuple[np.ndarray, Colour], ...] = ()  # (points, colour) drawn on top of the face


@dataclass(frozen=True)
class Studio:
    """What stays fixed while the turntable turns: camera, walls, floor, light, sensor."""

    wall: np.ndarray  # RGB float
    floor: np.ndarray
    elevation: float  # camera elevation, radians
    distance: float  # camera distance, car lengths
    frame: float  # fraction of the image width a side view spans
    wall_distance: float
    spot: tuple[float, float]  # wall light spot, fraction of width / height
    shadow: float
    noise: float
    quality: int


@dataclass(frozen=True)
class Car:
    """One car: its metadata row, its faces and what the post-pass needs (the studio)."""

    car_id: str
    meta: tuple[int, str, str, str, str]
    faces: tuple[Face, ...]
    width: float
    studio: Studio
    highlights: int


# ----------------------------------------------------------------------------------------------
# Geometry


def _chaikin(points: np.ndarray, iterations: int) -> np.ndarray:
    """Round a closed polygon's corners (car bodies have no sharp corners)."""
    for _ in range(iterations):
        following = np.roll(points, -1, axis=0)
        points = np.stack([0.75 * points + 0.25 * following, 0.25 * points + 0.75 * following], axis=1)
        points = points.reshape(-1, 2)
    return points


def _prism(profile: np.ndarray, z0: float, z1: float, colour_of_edge: EdgeStyle, cap_colour: Colour,
           cap_paint: bool, cap_decals: tuple[np.ndarray, ...] = (), decal_colour: Colour = (0.0, 0.0, 0.0)
           ) -> list[Face]:
    """Extrude a closed (x, y) profile from z0 to z1: two caps and one quad per edge.

    ``colour_of_edge(outward_normal_xy) -> (colour, paint)`` lets one profile carry paint and glass.
    ``cap_decals`` are (x, y) polygons drawn on both caps (side windows, hub caps).
    """
    signed_area = np.sum(profile[:, 0] * np.roll(profile[:, 1], -1) - np.roll(profile[:, 0], -1) * profile[:, 1])
    if signed_area < 0:  # make it counter-clockwise so (dy, -dx) points outwards
        profile = profile[::-1]
    faces = []
    for z, sign in ((z0, -1.0), (z1, 1.0)):
        lift = z + sign * 1e-3
        decals = tuple((np.column_stack([d, np.full(len(d), lift)]), decal_colour) for d in cap_decals)
        faces.append(Face(np.column_stack([profile, np.full(len(profile), z)]), np.array([0.0, 0.0, sign]),
                          cap_colour, cap_paint, decals))
    following = np.roll(profile, -1, axis=0)
    for a, b in zip(profile, following):
        dx, dy = b - a
        length = math.hypot(dx, dy)
        if length < 1e-9:
            continue
        normal = np.array([dy / length, -dx / length, 0.0])
        colour, paint = colour_of_edge(normal)
        quad = np.array([[a[0], a[1], z0], [b[0], b[1], z0], [b[0], b[1], z1], [a[0], a[1], z1]])
        faces.append(Face(quad, normal, colour, paint))
    return faces


def _box(x: tuple[float, float], y: tuple[float, float], z: tuple[float, float], colour: Colour,
         paint: bool = False) -> list[Face]:
    """An axis-aligned box (lights, grille, mirrors, spoiler): small parts that change the silhouette."""
    profile = np.array([[x[0], y[0]], [x[1], y[0]], [x[1], y[1]], [x[0], y[1]]])
    return _prism(profile, z[0], z[1], lambda n: (colour, paint), colour, paint)


def _rod(start: np.ndarray, end: np.ndarray, radius: float, colour: Colour) -> list[Face]:
    """A thin square rod between two 3-D points (antenna, roof-rail post)."""
    axis = (end - start) / np.linalg.norm(end - start)
    side = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    other = np.cross(axis, side)
    corners = [radius * (c * side + s * other) for c, s in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    faces = []
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        quad = np.array([start + a, start + b, end + b, end + a])
        normal = (a + b) / np.linalg.norm(a + b)
        faces.append(Face(quad, normal, colour, False))
    return faces


def _x_extent(profile: np.ndarray, y: float) -> tuple[float, float]:
    """Where a closed profile crosses height ``y``: (rear-most x, front-most x)."""
    following = np.roll(profile, -1, axis=0)
    crossing = (profile[:, 1] - y) * (following[:, 1] - y) <= 0
    a, b = profile[crossing], following[crossing]
    t = (y - a[:, 1]) / np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
    xs = a[:, 0] + t * (b[:, 0] - a[:, 0])
    return float(xs.min()), float(xs.max())


def _car_faces(rng: np.random.Generator, style: str, paint: Colour, glass: Colour) -> tuple[list[Face], float]:
    """Build one car: a body prism with wheel arches, a narrower cabin with glass, wheels, thin parts."""
    tall = style == "suv"
    clearance = rng.uniform(0.04, 0.055) if tall else rng.uniform(0.025, 0.04)
    belt = rng.uniform(0.22, 0.27) if tall else rng.uniform(0.17, 0.21)
    roof = belt + (rng.uniform(0.13, 0.16) if tall else rng.uniform(0.1, 0.13))
    radius = rng.uniform(0.075, 0.09) if tall else rng.uniform(0.062, 0.075)
    width = rng.uniform(0.4, 0.44) if tall else rng.uniform(0.37, 0.41)
    rear_wheel = -0.5 + rng.uniform(0.17, 0.22)
    front_wheel = 0.5 - rng.uniform(0.17, 0.21)
    hood = belt * rng.uniform(0.78, 0.9)
    trunk = belt * (rng.uniform(1.0, 1.06) if style == "sedan" else rng.uniform(0.9, 1.0))

    body = _body_profile(clearance, hood, belt, trunk, radius, rear_wheel, front_wheel, rng)
    screen_base = 0.5 - rng.uniform(0.3, 0.38)
    roof_front = screen_base - rng.uniform(0.12, 0.2)
    rear_base = -0.5 + (rng.uniform(0.02, 0.06) if style != "sedan" else rng.uniform(0.13, 0.2))
    roof_rear = rear_base + (rng.uniform(0.04, 0.1) if style != "sedan" else rng.uniform(0.1, 0.16))
    cabin_key = np.array([[rear_base, belt - 0.01], [screen_base, belt - 0.01], [roof_front, roof],
                          [roof_rear, roof]])
    cabin = _chaikin(cabin_key, 2)
    cabin_width = width * rng.uniform(0.8, 0.88)
    windows = _side_windows(cabin_key, belt, roof, rng)

    def cabin_edge(normal: np.ndarray) -> tuple[Colour, bool]:
        """Edges that face forwards or backwards are the windscreen and the rear window."""
        return (glass, False) if abs(normal[0]) > 0.35 else (paint, True)

    faces = _prism(body, -width / 2, width / 2, lambda normal: (paint, True), paint, True)
    faces += _prism(cabin, -cabin_width / 2, cabin_width / 2, cabin_edge, paint, True, windows, glass)
    faces += _wheels(rng, radius, width, (rear_wheel, front_wheel))
    faces += _lights(body, hood, width)
    faces += _thin_parts(rng, style, cabin_key, belt, roof, cabin_width, width, paint)
    return faces, width


def _body_profile(clearance: float, hood: float, belt: float, trunk: float, radius: float, rear_wheel: float,
                  front_wheel: float, rng: np.random.Generator) -> np.ndarray:
    """Side profile of the lower body: rounded nose and tail, hood rising to the windscreen, arches."""
    arch = radius * rng.uniform(1.12, 1.22)
    nose = rng.uniform(0.45, 0.6) * hood
    tail = rng.uniform(0.55, 0.75) * trunk
    points = [[-0.5 + 0.03, clearance], *_arch(rear_wheel, radius, arch, clearance),
              *_arch(front_wheel, radius, arch, clearance), [0.5 - 0.03, clearance],
              [0.5, nose], [0.5 - 0.04, hood], [0.5 - 0.3, belt], [-0.5 + 0.2, belt],
              [-0.5 + 0.03, trunk], [-0.5, tail]]
    return _chaikin(np.array(points), 2)


def _arch(centre_x: float, radius: float, arch: float, clearance: float) -> list[list[float]]:
    """The wheel-arch cut-out, walked front-ward along the bottom of the body (over the wheel)."""
    start = math.acos(np.clip((clearance - radius) / arch, -1, 1)) + math.pi / 2
    angles = np.linspace(start, start - 2 * (start - math.pi / 2), 9)
    return [[centre_x + arch * math.cos(a), radius + arch * math.sin(a)] for a in angles]


def _side_windows(cabin_key: np.ndarray, belt: float, roof: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, ...]:
    """Front and rear side windows inside the cabin outline, split by a B pillar."""
    rear_base, screen_base, roof_front, roof_rear = cabin_key
    low, high = belt + 0.012, roof - rng.uniform(0.012, 0.02)
    pillar = rng.uniform(0.012, 0.02)

    def along(a: np.ndarray, b: np.ndarray, y: float) -> float:
        return a[0] + (b[0] - a[0]) * (y - a[1]) / (b[1] - a[1])

    front_low, front_high = along(screen_base, roof_front, low) - pillar, along(screen_base, roof_front, high) - pillar
    rear_low, rear_high = along(rear_base, roof_rear, low) + pillar, along(rear_base, roof_rear, high) + pillar
    split = rng.uniform(0.4, 0.55) * (front_high - rear_high) + rear_high
    front = np.array([[split + pillar / 2, low], [front_low, low], [front_high, high], [split + pillar / 2, high]])
    rear = np.array([[rear_low, low], [split - pillar / 2, low], [split - pillar / 2, high], [rear_high, high]])
    return _chaikin(front, 1), _chaikin(rear, 1)


def _wheels(rng: np.random.Generator, radius: float, width: float, centres: tuple[float, float]) -> list[Face]:
    """Four tyres (dark cylinders touching the floor) with a lighter rim on the outer caps."""
    tyre = (rng.uniform(25, 45),) * 3
    rim = (rng.uniform(110, 200),) * 3
    tread = rng.uniform(0.045, 0.06)
    angles = np.linspace(0, 2 * math.pi, 20, endpoint=False)
    circle = np.column_stack([np.cos(angles), np.sin(angles)])
    faces = []
    for x in centres:
        outline = circle * radius + [x, radius]
        hub = circle * radius * rng.uniform(0.55, 0.7) + [x, radius]
        for z_out in (-width / 2 + 0.004, width / 2 - 0.004):
            z_in = z_out - math.copysign(tread, z_out)
            faces += _prism(outline, min(z_in, z_out), max(z_in, z_out), lambda n: (tyre, False), tyre, False,
                            (hub,), rim)
    return faces


def _lights(body: np.ndarray, hood: float, width: float) -> list[Face]:
    """Head- and tail-lights and a grille: small boxes proud of the nose and the tail."""
    y = hood * 0.8
    tail_x, nose_x = _x_extent(body, y)
    grille_y = hood * 0.5
    faces = []
    for side in (-1, 1):
        z = (side * (width / 2 - 0.02), side * (width / 2 - 0.09))
        faces += _box((nose_x - 0.03, nose_x + 0.004), (y - 0.015, y + 0.012), tuple(sorted(z)), (235, 235, 225))
        faces += _box((tail_x - 0.004, tail_x + 0.03), (y - 0.012, y + 0.015), tuple(sorted(z)), (150, 15, 20))
    grille_x = _x_extent(body, grille_y)[1]
    faces += _box((grille_x - 0.03, grille_x + 0.003), (grille_y - 0.025, grille_y + 0.02),
                  (-width / 2 + 0.1, width / 2 - 0.1), (35, 35, 38))
    return faces


def _thin_parts(rng: np.random.Generator, style: str, cabin_key: np.ndarray, belt: float, roof: float,
                cabin_width: float, width: float, paint: Colour) -> list[Face]:
    """Side mirrors, an antenna, roof rails or a spoiler: thin parts are what make border Dice hard."""
    rear_base, screen_base, roof_front, roof_rear = cabin_key
    faces = []
    mirror_x = screen_base[0] - 0.03
    reach = width / 2 + rng.uniform(0.02, 0.04)
    for side in (-1, 1):
        z = tuple(sorted((side * cabin_width / 2 * 0.95, side * reach)))
        faces += _box((mirror_x - 0.025, mirror_x), (belt + 0.008, belt + 0.03), z, paint, True)
    if rng.random() < 0.7:
        base = np.array([roof_rear[0] + rng.uniform(-0.02, 0.04), roof - 0.004, rng.uniform(-0.05, 0.05)])
        tip = base + [-rng.uniform(0.01, 0.05), rng.uniform(0.05, 0.09), 0.0]
        faces += _rod(base, tip, rng.uniform(0.0025, 0.0045), (20, 20, 22))
    if style == "suv" and rng.random() < 0.7:
        faces += _roof_rails(roof_front[0] - 0.02, roof_rear[0] + 0.02, roof, cabin_width, rng)
    elif style == "sedan" and rng.random() < 0.35:
        tail = rear_base[0] + 0.02
        height = belt * 1.05 + rng.uniform(0.02, 0.035)
        faces += _box((rear_base[0] - 0.14, rear_base[0] - 0.06), (height, height + 0.008),
                      (-cabin_width / 2, cabin_width / 2), paint, True)
        for side in (-1, 1):
            z = side * cabin_width * 0.35
            faces += _rod(np.array([tail - 0.12, belt * 1.02, z]), np.array([tail - 0.12, height, z]), 0.004, paint)
    return faces


def _roof_rails(front: float, rear: float, roof: float, cabin_width: float, rng: np.random.Generator
                ) -> list[Face]:
    """Two rails on posts above the roof: the gap under each rail is background, not car."""
    lift = rng.uniform(0.012, 0.02)
    faces = []
    for side in (-1, 1):
        z = side * cabin_width * 0.4
        faces += _rod(np.array([rear, roof + lift, z]), np.array([front, roof + lift, z]), 0.004, (30, 30, 32))
        for x in (front - 0.01, rear + 0.01):
            faces += _rod(np.array([x, roof - 0.01, z]), np.array([x, roof + lift, z]), 0.005, (30, 30, 32))
    return faces


# ----------------------------------------------------------------------------------------------
# Cars and studios


def _studio(rng: np.random.Generator) -> Studio:
    """A photo studio: light wall, floor, camera slightly above the car (as in Carvana)."""
    wall = rng.uniform(195, 245) + rng.uniform(-8, 8, 3)
    floor = wall * rng.uniform(0.78, 1.02) + rng.uniform(-5, 5, 3)
    return Studio(wall=np.clip(wall, 0, 255), floor=np.clip(floor, 0, 255),
                  elevation=math.radians(rng.uniform(6, 16)), distance=rng.uniform(3.5, 5.5),
                  frame=rng.uniform(0.7, 0.84), wall_distance=rng.uniform(1.0, 3.0),
                  spot=(rng.uniform(0.2, 0.8), rng.uniform(0.0, 0.4)), shadow=rng.uniform(0.25, 0.5),
                  noise=rng.uniform(1.0, 3.5), quality=int(rng.integers(85, 96)))


def _make_car(rng: np.random.Generator) -> Car:
    """Draw one car and its studio from the car's own generator (independent of the other cars)."""
    car_id = rng.bytes(6).hex()
    make, model, style = MODELS[rng.integers(len(MODELS))]
    meta = (int(rng.integers(2007, 2018)), make, model, TRIM1[rng.integers(len(TRIM1))],
            TRIM2[style][rng.integers(2)])
    studio = _studio(rng)
    if rng.random() < 0.25:  # paint close to the studio: the silhouette edge has little contrast
        paint = studio.wall + rng.uniform(-12, 12, 3)
    else:
        paint = np.array(PAINTS[rng.integers(len(PAINTS))]) + rng.uniform(-12, 12, 3)
    if rng.random() < 0.3:  # windows that show the studio behind the car
        glass = studio.wall * rng.uniform(0.85, 1.0)
    else:
        glass = np.array([40, 48, 58]) + rng.uniform(-15, 25)
    faces, width = _car_faces(rng, style, tuple(np.clip(paint, 0, 255)), tuple(np.clip(glass, 0, 255)))
    return Car(car_id, meta, tuple(faces), width, studio, int(rng.integers(1, 4)))


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Camera:
    """A pinhole camera; perspective (not orthographic) so near parts look nearer, as in a photo."""

    position: np.ndarray
    basis: np.ndarray  # rows: right, up, forward
    focal: float
    centre: tuple[float, float]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates and depth of world points (pinhole camera)."""
        local = (points - self.position) @ self.basis.T
        depth = local[:, 2]
        pixels = np.column_stack([self.centre[0] + self.focal * local[:, 0] / depth,
                                  self.centre[1] - self.focal * local[:, 1] / depth])
        return pixels, depth


def _camera(studio: Studio, size: tuple[int, int]) -> Camera:
    """Look at the car's middle from the studio's elevation; frame a side view to ``studio.frame``."""
    target = np.array([0.0, 0.17, 0.0])
    direction = np.array([math.cos(studio.elevation), math.sin(studio.elevation), 0.0])
    position = target + studio.distance * direction
    forward = -direction
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    focal = studio.frame * size[0] * studio.distance
    return Camera(position, np.stack([right, up, forward]), focal, (size[0] / 2, size[1] * 0.55))


def _turntable(angle: float) -> np.ndarray:
    """Rotation about the vertical axis: the car turns, the studio and its light stay."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _fill(canvas_depth: np.ndarray, canvas_rgb: np.ndarray, canvas_paint: np.ndarray, pixels: np.ndarray,
          depth: np.ndarray, colour: np.ndarray, paint: bool) -> None:
    """Z-buffered fill of one planar polygon; 1/depth is affine in screen space for a plane."""
    height, width = canvas_depth.shape
    x0, y0 = np.floor(pixels.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pixels.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return
    local = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(local, [np.round((pixels - [x0, y0]) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    rows, cols = np.nonzero(local)
    if rows.size == 0:
        return
    design = np.column_stack([pixels - [x0, y0], np.ones(len(pixels))])
    plane, *_ = np.linalg.lstsq(design, 1.0 / depth, rcond=None)
    inverse = (cols * plane[0] + rows * plane[1] + plane[2]).astype(np.float32)
    target = canvas_depth[y0:y1, x0:x1]
    nearer = inverse > target[rows, cols]
    rows, cols, inverse = rows[nearer], cols[nearer], inverse[nearer]
    target[rows, cols] = inverse
    canvas_rgb[y0:y1, x0:x1][rows, cols] = colour
    canvas_paint[y0:y1, x0:x1][rows, cols] = paint


def _render_car(car: Car, camera: Camera, rotation: np.ndarray, canvas: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw every face that looks at the camera into a supersampled z-buffer.

    Returns the RGB canvas (black outside the car), the car mask and the body-paint mask.
    """
    width, height = canvas
    depth_buffer = np.zeros((height, width), np.float32)  # holds 1/depth; 0 = nothing drawn
    rgb = np.zeros((height, width, 3), np.uint8)
    paint = np.zeros((height, width), np.uint8)
    view = camera.position
    light = np.array(LIGHT) / np.linalg.norm(LIGHT)
    for face in car.faces:
        points = face.points @ rotation.T
        normal = rotation @ face.normal
        if np.dot(normal, view - points.mean(axis=0)) <= 0:
            continue
        gain = 0.5 + 0.6 * max(0.0, float(normal @ light))
        for polygon, colour, is_paint in ((points, face.colour, face.paint),
                                          *((d @ rotation.T, c, False) for d, c in face.decals)):
            pixels, depth = camera.project(polygon)
            shaded = np.clip(np.array(colour) * gain, 0, 255).astype(np.uint8)
            _fill(depth_buffer, rgb, paint, pixels, depth, shaded, is_paint)
    return rgb, (depth_buffer > 0).astype(np.uint8) * 255, paint * 255


def _background(studio: Studio, camera: Camera, size: tuple[int, int], car: Car, rotation: np.ndarray,
                scale: float) -> np.ndarray:
    """Wall, soft horizon, floor, a light spot and a soft shadow under the car, at output size."""
    width, height = size
    horizon = camera.project(np.array([[-studio.wall_distance, 0.0, 0.0]]))[0][0, 1] / scale
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    blend = 1 / (1 + np.exp(-(ys - horizon) / (0.025 * height)))  # soft cyclorama curve
    wall_light = 1.0 + 0.12 * np.exp(-(((xs / width - studio.spot[0]) ** 2) + (ys / height - studio.spot[1]) ** 2) / 0.15)
    floor_light = 1.0 - 0.12 * (ys - horizon).clip(0) / height
    image = (1 - blend)[..., None] * studio.wall * wall_light[..., None] + blend[..., None] * studio.floor * floor_light[..., None]
    return image * (1 - _shadow(studio, camera, size, car, rotation, scale))[..., None]


def _shadow(studio: Studio, camera: Camera, size: tuple[int, int], car: Car, rotation: np.ndarray,
            scale: float) -> np.ndarray:
    """A soft blurred footprint plus a darker contact shadow: shadow is floor, never car.

    Drawn at about 240 px wide and scaled up: the shadow is smooth, and blurring a 1918 px image with a
    90 px Gaussian would cost more than rendering the car.
    """
    shrink = max(1, size[0] // 240)
    width, height = -(-size[0] // shrink), -(-size[1] // shrink)
    scale = scale * shrink
    corners = np.array([[-0.55, 0, -car.width * 0.6], [0.55, 0, -car.width * 0.6],
                        [0.55, 0, car.width * 0.6], [-0.55, 0, car.width * 0.6]])
    corners = _chaikin(corners[:, [0, 2]], 3)
    ground = np.column_stack([corners[:, 0], np.zeros(len(corners)), corners[:, 1]]) @ rotation.T
    pixels = camera.project(ground)[0] / scale
    soft = np.zeros((height, width), np.float32)
    cv2.fillPoly(soft, [np.round(pixels * 16).astype(np.int32)], 1.0, shift=4)
    car_pixels = width * studio.frame  # a side view's length, in the pixels drawn here
    contact = cv2.GaussianBlur(soft, (0, 0), max(0.5, 0.015 * car_pixels))
    soft = cv2.GaussianBlur(soft, (0, 0), max(1.0, 0.06 * car_pixels))
    shadow = np.clip(studio.shadow * soft + 0.3 * contact, 0, 0.85)
    return cv2.resize(shadow, size, interpolation=cv2.INTER_LINEAR) if shrink > 1 else shadow


def _highlights(rng: np.random.Generator, count: int, coverage: np.ndarray) -> np.ndarray:
    """Specular streaks: long thin bright ellipses inside the car's bounding box."""
    height, width = coverage.shape
    rows, cols = np.nonzero(coverage > 0.5)
    field = np.zeros((height, width), np.float32)
    if rows.size == 0:
        return field
    for _ in range(count):
        centre = (float(rng.uniform(cols.min(), cols.max())), float(rng.uniform(rows.min(), rows.max())))
        axes = (float(rng.uniform(0.1, 0.3) * (cols.max() - cols.min() + 1)), float(rng.uniform(0.01, 0.03) * height))
        angle = float(rng.uniform(-12, 12))
        cv2.ellipse(field, (centre, (2 * axes[0], 2 * axes[1]), angle), float(rng.uniform(0.5, 1.0)), -1)
    return cv2.GaussianBlur(field, (0, 0), max(0.6, 0.006 * width))


def _supersampling(size: tuple[int, int]) -> int:
    """Subpixels per pixel side: enough for smooth edges, bounded so 1918x1280 stays affordable."""
    return int(np.clip(round(1000 / size[0]), 2, 4))


def render_view(car: Car, view: int, size: tuple[int, int], rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """Render view ``view`` (1..16, 22.5 degrees apart, 1 = front) as JPEG bytes and a 0/1 mask."""
    width, height = size
    scale = _supersampling(size)
    camera = _camera(car.studio, (width * scale, height * scale))
    rotation = _turntable(math.radians((view - 1) * 360 / VIEWS))
    rgb, mask, paint = _render_car(car, camera, rotation, (width * scale, height * scale))
    premultiplied = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    coverage = cv2.resize(mask, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    paint_cover = cv2.resize(paint, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    background = _background(car.studio, camera, size, car, rotation, scale)
    image = background * (1 - coverage[..., None]) + premultiplied
    image += (255 * paint_cover * _highlights(rng, car.highlights, coverage))[..., None]
    image += rng.normal(0, car.studio.noise, image.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=car.studio.quality)
    return buffer.getvalue(), (coverage >= 0.5).astype(np.uint8)


def _gif(mask: np.ndarray) -> bytes:
    """A Carvana-style mask: palette image whose pixel values are 0 and 1."""
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, "GIF")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Writing the data set


Task = tuple[np.random.SeedSequence, Path, tuple[int, int], bool]


def _write_car(task: Task) -> tuple[str, tuple[int, str, str, str, str], list[tuple[str, str]]]:
    """Render and write one car's 16 views; return its id, metadata row and (img, rle) rows."""
    seed, root, size, labelled = task
    rng = np.random.default_rng(seed)
    car = _make_car(rng)
    rows = []
    for view in range(1, VIEWS + 1):
        name = f"{car.car_id}_{view:02d}"
        jpeg, mask = render_view(car, view, size, rng)
        (root / ("train" if labelled else "test") / f"{name}.jpg").write_bytes(jpeg)
        if labelled:
            (root / "train_masks" / f"{name}_mask.gif").write_bytes(_gif(mask))
            rows.append((f"{name}.jpg", encode(mask)))
    return car.car_id, car.meta, rows


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _tasks(root: Path, cars: int, test_cars: int, size: tuple[int, int], seed: int) -> Iterator[Task]:
    """One task per car; train car i and test car j keep their seeds whatever the other counts are."""
    train_seeds, test_seeds = np.random.SeedSequence(seed).spawn(2)
    for child in train_seeds.spawn(cars):
        yield child, root, size, True
    for child in test_seeds.spawn(test_cars):
        yield child, root, size, False


def _generate(root: Path, cars: int, test_cars: int, size: tuple[int, int], seed: int, workers: int) -> None:
    """Fill ``root`` (a fresh folder) with the whole data set."""
    for folder in ("train", "train_masks", "test"):
        (root / folder).mkdir()
    tasks = list(_tasks(root, cars, test_cars, size, seed))
    if workers > 1 and len(tasks) > 1:
        # spawn, not fork: a fork of a process that already runs torch threads hung here in testing.
        # One OpenCV thread per worker, since the workers already fill the CPUs.
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=get_context("spawn"),
                                 initializer=cv2.setNumThreads, initargs=(1,)) as pool:
            results = list(pool.map(_write_car, tasks))
    else:
        results = [_write_car(task) for task in tasks]
    seen = [car_id for car_id, _, _ in results]
    if len(set(seen)) != len(seen):  # 48-bit ids: practically never, but a clash would merge two cars
        raise BenchError(f"seed {seed} drew the same car id twice; use another seed")
    _write_csv(root / "train_masks.csv", ("img", "rle_mask"), [row for _, _, rows in results[:cars] for row in rows])
    _write_csv(root / "metadata.csv", ("id", "year", "make", "model", "trim1", "trim2"),
               [(car_id, *meta) for car_id, meta, _ in results])


def _check(cars: int, test_cars: int, size: tuple[int, int]) -> tuple[int, int]:
    """Refuse parameters that cannot give a usable data set, before any work is done."""
    if cars < 1 or test_cars < 0:
        raise BenchError(f"synthetic data needs cars >= 1 and test_cars >= 0, got cars={cars}, test_cars={test_cars}")
    width, height = (int(v) for v in size)
    if min(width, height) < MIN_SIDE:
        raise BenchError(f"synthetic image size {width}x{height} is too small; each side must be >= {MIN_SIDE}")
    return width, height


def _default_workers() -> int:
    """The CPUs this process may use (a container's limit, not the host's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _build_beside(out: Path, cars: int, test_cars: int, size: tuple[int, int], seed: int, workers: int | None) -> bool:
    """Generate into a temporary sibling of ``out`` and rename it into place.

    Returns False (and removes the temporary folder) when ``out`` was filled by someone else first:
    renaming onto a non-empty folder fails, so exactly one of several racing processes wins.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        _generate(temporary, cars, test_cars, size, seed, workers or _default_workers())
        link_hq_folders(temporary)
        try:
            os.replace(temporary, out)
        except OSError:
            if out.is_dir() and any(out.iterdir()):
                return False
            raise
        return True
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def link_hq_folders(root: Path) -> None:
    """``train_hq`` and ``test_hq`` as links to ``train`` and ``test``: synthetic images come in one
    quality, and the links let a recipe that reads Carvana's high-quality folders (``data.images =
    "hq"``, as the seed teams did) run on the built-in data unchanged."""
    for split in ("train", "test"):
        link = root / f"{split}_hq"
        if (root / split).is_dir() and not link.exists():
            try:
                link.symlink_to(split, target_is_directory=True)  # relative: the folder may move
            except FileExistsError:  # another process linked it first
                pass


def write_synthetic_carvana(out: Path, *, cars: int, test_cars: int, size: tuple[int, int], seed: int,
                            workers: int | None = None) -> Path:
    """Write a synthetic data set in the Carvana layout to ``out`` and return ``out``.

    ``size`` is (width, height). The folder appears complete or not at all (generated beside it,
    then renamed); an existing non-empty ``out`` is refused rather than mixed with new files.
    ``workers`` processes render cars in parallel (default: the usable CPUs); the files do not depend on it.
    They are spawned, so a script that calls this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard; ``workers=1`` renders in this process.
    """
    out = Path(out)
    size = _check(cars, test_cars, size)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out} already exists and is not empty; choose a new folder for the synthetic data")
    if not _build_beside(out, cars, test_cars, size, seed, workers):
        raise BenchError(f"{out} was filled by another process while generating; choose a new folder")
    return out


def default_cache_root() -> Path:
    """Where generated data lives between runs: ``$SEGBENCH_CACHE`` or ``~/.cache/segbench``."""
    configured = os.environ.get("SEGBENCH_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "segbench"


def cached_synthetic_carvana(*, cars: int, test_cars: int, size: tuple[int, int], seed: int,
                             cache_root: Path | None = None, workers: int | None = None) -> Path:
    """The synthetic data set for these parameters, generated once and then reused.

    Safe when several processes ask at once: each generates beside the cache folder and renames;
    the losers drop their copy and use the winner's, which is byte-identical anyway.
    """
    width, height = _check(cars, test_cars, size)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    out = root / "synthetic" / f"v{GENERATOR_VERSION}" / f"c{cars}-t{test_cars}-{width}x{height}-s{seed}"
    if not (out.is_dir() and any(out.iterdir())):
        _build_beside(out, cars, test_cars, (width, height), seed, workers)
    link_hq_folders(out)  # folders cached before the links existed
    return out
