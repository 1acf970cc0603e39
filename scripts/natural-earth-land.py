#!/usr/bin/env python3
"""Turn Natural Earth's 1:110m land (public domain), as the npm package world-atlas 2.0.2
ships it (land-110m.json, TopoJSON), into the console's offline map data: one SVG path in
the equirectangular projection the console draws (x = longitude + 180, y = 90 - latitude,
so the world is 360 x 180 units), at 0.1 degree.

    npm pack world-atlas@2.0.2 && tar xzf world-atlas-2.0.2.tgz
    python3 scripts/natural-earth-land.py package/land-110m.json \
        > crates/node/src/console/assets/land-110m.path
"""
import json
import sys


def decode_arcs(topo):
    """Absolute longitude/latitude of every arc (TopoJSON quantized, delta-encoded)."""
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x += dx
            y += dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def ring_points(arcs, indices):
    """One ring from its arcs; a negative index ~i is arc i reversed. Shared ends once."""
    out = []
    for i in indices:
        arc = arcs[i] if i >= 0 else list(reversed(arcs[~i]))
        out.extend(arc if not out else arc[1:])
    return out


def unwrapped(ring):
    """A ring that crosses the antimeridian, with continuous longitudes (beyond +-180), and
    its copy a world away, so that a map clipped to -180..180 shows both halves; other
    rings (and Antarctica's, which goes round the pole) as they are."""
    out = [ring[0]]
    for lon, lat in ring[1:]:
        prev = out[-1][0]
        while lon - prev > 180:
            lon -= 360
        while prev - lon > 180:
            lon += 360
        out.append((lon, lat))
    if out == ring or abs(out[-1][0] - out[0][0]) > 1:
        return [ring]
    shift = 360 if min(lon for lon, _ in out) < -180 else -360
    return [out, [(lon + shift, lat) for lon, lat in out]]


def path(rings):
    """SVG path data, one closed ring a line; consecutive points equal at 0.1 degree dropped."""
    parts = []
    for ring in (r for ring in rings for r in unwrapped(ring)):
        seen = []
        for lon, lat in ring:
            p = (round(lon + 180, 1), round(90 - lat, 1))
            if not seen or seen[-1] != p:
                seen.append(p)
        if len(seen) < 4:
            continue
        text = " ".join(f"{x:g} {y:g}" for x, y in seen[:-1])
        parts.append(f"M{text}Z")
    return "\n".join(parts)


def main():
    topo = json.load(open(sys.argv[1]))
    arcs = decode_arcs(topo)
    rings = []
    for geometry in topo["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"]
        if geometry["type"] == "Polygon":
            polygons = [polygons]
        for polygon in polygons:
            for ring in polygon:
                rings.append(ring_points(arcs, ring))
    print(path(rings))


if __name__ == "__main__":
    main()
