//! The offline map: a notification's geo areas and points drawn over the world's coastlines,
//! rendered on the server as inline SVG (no tiles, no script, nothing from another host).
//! In compose the same map is a picker: the page's script (`assets/app.js`) turns a click
//! into latitude and longitude with the projection named on the map (`data-k`, the view
//! box) and asks the server (`pages::compose_map_live`) to redraw it as the fields change.
//!
//! The coastlines are Natural Earth's 1:110m land (public domain), converted once by
//! `scripts/natural-earth-land.py` into `assets/land-110m.path`: one closed ring a line, in
//! the equirectangular plane `x = longitude + 180`, `y = 90 - latitude` (degrees), rounded
//! to 0.1°. A map is cut to the shapes it shows (with a margin, at least
//! [`VIEW_DEGREES_MIN`] high) and squeezed east–west by the cosine of its middle latitude,
//! so that a circle of 25 km looks round; only the land clipped to the view is sent.

use std::sync::OnceLock;

use detente_formats::value::{Fixed, GeoArea, GeoPoint};
use maud::{html, Markup};

const LAND: &str = include_str!("assets/land-110m.path");
/// Geo fields drawn on one map, at most (the built-in formats have two).
pub const MAP_SHAPES_MAX: usize = 8;
/// The lowest view, in degrees of latitude: small areas still show their coast.
const VIEW_DEGREES_MIN: f64 = 12.0;
/// Room around the shapes, as a share of their extent on each side.
const VIEW_MARGIN: f64 = 0.4;
const KM_PER_DEGREE: f64 = 111.32;

/// One land ring: its bounding box in the plane and its points.
struct Ring {
    min: (f64, f64),
    max: (f64, f64),
    points: Vec<(f64, f64)>,
}

fn rings() -> &'static [Ring] {
    static RINGS: OnceLock<Vec<Ring>> = OnceLock::new();
    RINGS.get_or_init(|| LAND.lines().filter_map(ring).collect())
}

fn ring(d: &str) -> Option<Ring> {
    let numbers: Vec<f64> = d
        .trim_start_matches('M')
        .trim_end_matches('Z')
        .split(' ')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let points: Vec<(f64, f64)> = numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let (min, max) = points.iter().fold(
        ((f64::MAX, f64::MAX), (f64::MIN, f64::MIN)),
        |((x0, y0), (x1, y1)), (x, y)| ((x0.min(*x), y0.min(*y)), (x1.max(*x), y1.max(*y))),
    );
    Some(Ring { min, max, points })
}

/// The part of a ring inside the rectangle `lo`..`hi` (Sutherland–Hodgman, one edge of
/// the rectangle at a time). A concave ring may keep zero-width runs along the rectangle's
/// edges; callers clip to a rectangle a little larger than the view, where they do not show.
fn clip(points: &[(f64, f64)], lo: (f64, f64), hi: (f64, f64)) -> Vec<(f64, f64)> {
    type Edge = (
        fn((f64, f64), f64) -> bool,
        fn((f64, f64), (f64, f64), f64) -> (f64, f64),
        f64,
    );
    let cross_x =
        |a: (f64, f64), b: (f64, f64), x: f64| (x, a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0));
    let cross_y =
        |a: (f64, f64), b: (f64, f64), y: f64| (a.0 + (b.0 - a.0) * (y - a.1) / (b.1 - a.1), y);
    let edges: [Edge; 4] = [
        (|p, x| p.0 >= x, cross_x, lo.0),
        (|p, x| p.0 <= x, cross_x, hi.0),
        (|p, y| p.1 >= y, cross_y, lo.1),
        (|p, y| p.1 <= y, cross_y, hi.1),
    ];
    let mut out = points.to_vec();
    for (inside, cross, at) in edges {
        let Some(&last) = out.last() else { break };
        let mut kept = Vec::with_capacity(out.len());
        let mut prev = last;
        for &p in &out {
            match (inside(p, at), inside(prev, at)) {
                (true, true) => kept.push(p),
                (true, false) => kept.extend([cross(prev, p, at), p]),
                (false, true) => kept.push(cross(prev, p, at)),
                (false, false) => {}
            }
            prev = p;
        }
        out = kept;
    }
    out
}

/// What a geo field holds, in the plane's degrees.
#[derive(Clone)]
enum Geo {
    Point((f64, f64)),
    /// Centre and half-extents (east–west, north–south) of a circle of so many km.
    Circle((f64, f64), (f64, f64)),
    Polygon(Vec<(f64, f64)>),
}

/// A shape to draw and the field label it carries.
#[derive(Clone)]
pub struct Shape {
    label: String,
    geo: Geo,
}

fn degrees(f: Fixed) -> f64 {
    f.0 as f64 / 1e6
}

fn plane(p: &GeoPoint) -> (f64, f64) {
    (degrees(p.lon) + 180.0, 90.0 - degrees(p.lat))
}

fn geo_of(type_name: &str, value: &str) -> Option<Geo> {
    match type_name {
        "geo-point" => Some(Geo::Point(plane(&GeoPoint::parse(value).ok()?))),
        "geo-area" => match GeoArea::parse(value).ok()? {
            GeoArea::Circle { center, radius_km } => {
                let km = degrees(radius_km);
                let cos = degrees(center.lat).to_radians().cos().max(0.05);
                Some(Geo::Circle(
                    plane(&center),
                    (km / (KM_PER_DEGREE * cos), km / KM_PER_DEGREE),
                ))
            }
            GeoArea::Polygon(points) => Some(Geo::Polygon(unwrapped(points.iter().map(plane)))),
        },
        _ => None,
    }
}

/// A polygon's corners in the plane, each taken the short way from the one before: a
/// polygon across the antimeridian (corners at 170° E and 170° W) spans 20°, not 340°, and
/// the map stays as narrow as the area. Its middle is then brought back into the world
/// (0..360), the corners around it may lie a little outside, where the land is drawn too.
fn unwrapped(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (mut x, y) in points {
        if let Some(&(prev, _)) = out.last() {
            x += 360.0 * ((prev - x) / 360.0).round();
        }
        out.push((x, y));
    }
    let (min, max) = out.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    let shift = -360.0 * (((min + max) / 2.0) / 360.0).floor();
    for (x, _) in &mut out {
        *x += shift;
    }
    out
}

/// The geo fields of a notification in `format`, in the format's order, labelled in
/// `lang`; `value` gives a field's text by key. Values that do not parse are left out.
pub fn shapes(format: &str, lang: &str, value: impl Fn(&str) -> Option<String>) -> Vec<Shape> {
    let Some(def) = detente_formats::builtin().latest(format) else {
        return Vec::new();
    };
    detente_formats::describe(def, lang)
        .fields
        .into_iter()
        .filter_map(|f| {
            let geo = geo_of(&f.type_name, value(&f.key)?.trim())?;
            Some(Shape {
                label: f.label,
                geo,
            })
        })
        .take(MAP_SHAPES_MAX)
        .collect()
}

impl Geo {
    /// Bounding box in the plane.
    fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        match self {
            Geo::Point(p) => (*p, *p),
            Geo::Circle((x, y), (rx, ry)) => ((x - rx, y - ry), (x + rx, y + ry)),
            Geo::Polygon(points) => points.iter().fold(
                ((f64::MAX, f64::MAX), (f64::MIN, f64::MIN)),
                |((x0, y0), (x1, y1)), (x, y)| ((x0.min(*x), y0.min(*y)), (x1.max(*x), y1.max(*y))),
            ),
        }
    }

    fn center(&self) -> (f64, f64) {
        let ((x0, y0), (x1, y1)) = self.bounds();
        ((x0 + x1) / 2.0, (y0 + y1) / 2.0)
    }
}

/// What the map shows: the east–west squeeze `k` and the view box, in screen units
/// (`x * k`, `y`), twice as wide as high.
struct View {
    k: f64,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

fn view(shapes: &[Shape]) -> View {
    let ((x0, y0), (x1, y1)) = shapes.iter().map(|s| s.geo.bounds()).fold(
        ((f64::MAX, f64::MAX), (f64::MIN, f64::MIN)),
        |((a, b), (c, d)), ((e, f), (g, h))| ((a.min(e), b.min(f)), (c.max(g), d.max(h))),
    );
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let k = (90.0 - cy).to_radians().cos().clamp(0.2, 1.0);
    let grow = 1.0 + 2.0 * VIEW_MARGIN;
    let h = ((y1 - y0) * grow)
        .max((x1 - x0) * k * grow / 2.0)
        .clamp(VIEW_DEGREES_MIN, 180.0);
    let w = 2.0 * h;
    View {
        k,
        x: cx * k - w / 2.0,
        y: (cy - h / 2.0).clamp(0.0, 180.0 - h),
        w,
        h,
    }
}

/// The land in the view, as one path of rings clipped to it, for the world at `offset`
/// degrees east (a view across the antimeridian shows two copies of the world side by
/// side). Only what shows is sent: a map of one point in the South China Sea is a few KB,
/// not Eurasia's whole coast.
fn land_in(v: &View, offset: f64) -> String {
    // A tenth of the view more on each side, so that clipping's edges never show.
    let (mx, my) = (v.w / v.k / 10.0, v.h / 10.0);
    let lo = (v.x / v.k - offset - mx, v.y - my);
    let hi = ((v.x + v.w) / v.k - offset + mx, v.y + v.h + my);
    let mut d = String::new();
    for r in rings() {
        if r.max.0 < lo.0 || r.min.0 > hi.0 || r.max.1 < lo.1 || r.min.1 > hi.1 {
            continue;
        }
        let points = clip(&r.points, lo, hi);
        if points.len() < 3 {
            continue;
        }
        let text: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1} {y:.1}"))
            .collect();
        d.push('M');
        d.push_str(&text.join(" "));
        d.push('Z');
    }
    d
}

impl Geo {
    fn xs_mut(&mut self) -> Vec<&mut f64> {
        match self {
            Geo::Point((x, _)) | Geo::Circle((x, _), _) => vec![x],
            Geo::Polygon(points) => points.iter_mut().map(|(x, _)| x).collect(),
        }
    }
}

/// Shapes more than half the world apart east–west are closer across the antimeridian
/// (a launch from California into the western Pacific): move the western ones a world
/// east, so that the view takes the short way.
fn wrap(shapes: &mut [Shape]) {
    let xs: Vec<f64> = shapes
        .iter_mut()
        .flat_map(|s| s.geo.xs_mut())
        .map(|x| *x)
        .collect();
    let (min, max) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    if max - min <= 180.0 {
        return;
    }
    for s in shapes.iter_mut() {
        // A shape is moved whole, by its centre, so a polygon is never torn apart.
        if s.geo.center().0 < 180.0 {
            for x in s.geo.xs_mut() {
                *x += 360.0;
            }
        }
    }
}

fn n(v: f64) -> String {
    format!("{v:.3}")
}

/// The whole world, for a map with nothing on it yet (the compose picker's first view).
const WORLD: View = View {
    k: 1.0,
    x: 0.0,
    y: 0.0,
    w: 360.0,
    h: 180.0,
};

/// The map of `shapes` (none: no map), titled `title`, with each shape's label beside it.
/// Shapes differ by outline pattern as well as colour.
pub fn svg(shapes: &[Shape], title: &str, id: &str) -> Markup {
    if shapes.is_empty() {
        return html! {};
    }
    drawn(shapes, title, id)
}

/// The map of `shapes`, or of the whole world when there are none. `data-k` carries the
/// east–west squeeze: with the view box, it is all a script needs to turn a point of the
/// map back into latitude and longitude (`lon = x / k - 180`, `lat = 90 - y`, a world east
/// or west where the view crosses the antimeridian).
fn drawn(shapes: &[Shape], title: &str, id: &str) -> Markup {
    let mut shapes = shapes.to_vec();
    wrap(&mut shapes);
    let v = if shapes.is_empty() {
        WORLD
    } else {
        view(&shapes)
    };
    let title_id = format!("{id}-title");
    let font = v.h / 16.0;
    html! {
        svg.map id=(id) role="img" aria-labelledby=(title_id) data-k=(n(v.k))
            viewBox={ (n(v.x)) " " (n(v.y)) " " (n(v.w)) " " (n(v.h)) } {
            title id=(title_id) { (title) }
            rect.sea x=(n(v.x)) y=(n(v.y)) width=(n(v.w)) height=(n(v.h)) {}
            g transform={ "scale(" (n(v.k)) " 1)" } {
                // A view that crosses the antimeridian shows a world west or east too.
                @for offset in [-360.0, 0.0, 360.0] {
                    @let land = land_in(&v, offset);
                    @if !land.is_empty() {
                        path.land transform={ "translate(" (offset) " 0)" } d=(land) {}
                    }
                }
                @for (i, s) in shapes.iter().enumerate() {
                    @let class = format!("area area-{}", i % 4);
                    @match &s.geo {
                        Geo::Circle((x, y), (rx, ry)) => ellipse class=(class) cx=(n(*x)) cy=(n(*y)) rx=(n(*rx)) ry=(n(*ry)) {},
                        Geo::Polygon(points) => polygon class=(class)
                            points=(points.iter().map(|(x, y)| format!("{},{}", n(*x), n(*y))).collect::<Vec<_>>().join(" ")) {},
                        Geo::Point(_) => {},
                    }
                }
            }
            @for (i, s) in shapes.iter().enumerate() {
                @let (x, y) = s.geo.center();
                @if let Geo::Point(_) = s.geo {
                    circle class={ "point area-" (i % 4) } cx=(n(x * v.k)) cy=(n(y)) r=(n(v.h / 80.0)) {}
                }
                text.map-label x=(n(x * v.k + v.h / 50.0)) y=(n(y - v.h / 50.0)) font-size=(n(font)) { (s.label) }
            }
        }
    }
}

/// The map in a figure, with its caption: what it shows, and whose coastlines.
pub fn figure(shared: &crate::Shared, op: &super::Operator, shapes: &[Shape], id: &str) -> Markup {
    if shapes.is_empty() {
        return html! {};
    }
    let t = |k: &str| super::pages::tr(shared, op, k);
    let labels: Vec<&str> = shapes.iter().map(|s| s.label.as_str()).collect();
    let separator = t("list-separator");
    let title = super::pages::tr_with(
        shared,
        op,
        "map-title",
        &[("shapes", labels.join(&separator))],
    );
    html! {
        figure.map-figure {
            (svg(shapes, &title, id))
            figcaption {
                (title) " · " (t("map-source")) " " span translate="no" { "Natural Earth" }
            }
        }
    }
}

/// The compose picker's map: `shapes` as typed so far, or the whole world before anything
/// is, captioned with what a click does; the page's script places points on it.
pub fn picker(shared: &crate::Shared, op: &super::Operator, shapes: &[Shape], id: &str) -> Markup {
    let t = |k: &str| super::pages::tr(shared, op, k);
    let labels: Vec<&str> = shapes.iter().map(|s| s.label.as_str()).collect();
    let title = if shapes.is_empty() {
        t("map-world")
    } else {
        super::pages::tr_with(
            shared,
            op,
            "map-title",
            &[("shapes", labels.join(&t("list-separator")))],
        )
    };
    html! {
        // Inside what the script redraws, so that it goes once something is typed.
        @if shapes.is_empty() {
            p #map-preview-empty { (t("compose-map-preview-empty")) }
        }
        figure.map-figure {
            (drawn(shapes, &title, id))
            figcaption {
                (title) " · " (t("map-source")) " " span translate="no" { "Natural Earth" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(type_name: &str, value: &str) -> Shape {
        Shape {
            label: "x".into(),
            geo: geo_of(type_name, value).unwrap(),
        }
    }

    #[test]
    fn the_land_data_parses_into_rings_within_the_plane() {
        let all = rings();
        assert_eq!(all.len(), LAND.lines().count(), "every ring parses");
        assert!(all.len() > 100);
        for r in all {
            assert!(
                r.min.0 >= -360.0 && r.max.0 <= 720.0,
                "{:?}",
                (r.min, r.max)
            );
            assert!(r.min.1 >= 0.0 && r.max.1 <= 180.0);
        }
    }

    #[test]
    fn a_small_circle_is_round_on_screen_and_its_coast_is_in_view() {
        // 25 km around a point in Nebraska: about 0.22° north-south, 0.30° east-west.
        let s = [shape("geo-area", "circle:40.5,-100.2,25")];
        let v = view(&s);
        assert_eq!(v.h, VIEW_DEGREES_MIN);
        assert_eq!(v.w, 2.0 * v.h);
        let Geo::Circle(_, (rx, ry)) = s[0].geo else {
            panic!()
        };
        assert!(
            (rx * v.k - ry).abs() < 0.01 * ry,
            "round: {rx} * {} vs {ry}",
            v.k
        );
        let land = land_in(&v, 0.0);
        assert!(
            !land.is_empty() && land.len() < LAND.len(),
            "only the rings in view"
        );
    }

    #[test]
    fn clipping_keeps_what_is_inside_and_cuts_at_the_edges() {
        let square = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)];
        assert_eq!(clip(&square, (-1.0, -1.0), (11.0, 11.0)), square.to_vec());
        let cut = clip(&square, (5.0, -1.0), (11.0, 11.0));
        assert_eq!(cut.len(), 4);
        assert!(cut.iter().all(|(x, _)| *x >= 5.0), "{cut:?}");
        assert!(clip(&square, (20.0, 20.0), (30.0, 30.0)).is_empty());
    }

    #[test]
    fn a_point_in_the_south_china_sea_sends_a_few_kilobytes_of_coast() {
        let s = [shape("geo-point", "18.2,114.6")];
        let land = land_in(&view(&s), 0.0);
        assert!(
            !land.is_empty() && land.len() < 8_000,
            "{} bytes",
            land.len()
        );
    }

    #[test]
    fn a_view_across_the_antimeridian_takes_the_short_way() {
        // Vandenberg to Kwajalein: 72 degrees apart across the Pacific, 288 the other way.
        let mut s = [
            shape("geo-area", "circle:34.7,-120.6,30"),
            shape("geo-area", "circle:9.4,167.5,100"),
        ];
        wrap(&mut s);
        let v = view(&s);
        assert!(v.w < 180.0, "{}", v.w);
        assert!(
            !land_in(&v, 360.0).is_empty(),
            "North America, a world east"
        );
    }

    #[test]
    fn the_picker_shows_the_world_before_anything_is_typed_with_its_squeeze() {
        let world = drawn(&[], "world", "m").into_string();
        assert!(world.contains("data-k=\"1.000\""), "{world}");
        assert!(
            world.contains("viewBox=\"0.000 0.000 360.000 180.000\""),
            "{world}"
        );
        assert!(world.contains("<path class=\"land\""));
        // Nebraska: the view is squeezed by the cosine of its latitude, and says so.
        let s = [shape("geo-area", "circle:40.5,-100.2,25")];
        let k = format!("data-k=\"{}\"", n(view(&s).k));
        assert!(drawn(&s, "t", "m").into_string().contains(&k));
        assert_eq!(
            svg(&[], "t", "m").into_string(),
            "",
            "a message map needs shapes"
        );
    }

    #[test]
    fn a_polygon_across_the_antimeridian_gets_a_narrow_map() {
        // Corners at 170° E, 170° W and 175° W: 20° wide the short way.
        let s = [shape("geo-area", "polygon:10,170;12,-170;8,-175")];
        let ((x0, _), (x1, _)) = s[0].geo.bounds();
        assert!((x1 - x0 - 20.0).abs() < 1e-9, "{x0}..{x1}");
        let v = view(&s);
        assert!(v.w < 60.0, "{}", v.w);
        // The middle is in the world; the land either side is drawn.
        let (cx, _) = s[0].geo.center();
        assert!((0.0..360.0).contains(&cx), "{cx}");
        let drawn = svg(&s, "t", "m").into_string();
        assert!(drawn.contains("<polygon"), "{drawn}");
        // A circle just west of the antimeridian and one just east: one narrow map.
        let mut both = [
            shape("geo-area", "circle:-17,179.5,50"),
            shape("geo-area", "circle:-16,-179.5,50"),
        ];
        wrap(&mut both);
        assert!(view(&both).w < 60.0);
    }

    #[test]
    fn two_areas_far_apart_are_both_in_view() {
        let s = [
            shape("geo-area", "circle:40.5,-100.2,25"),
            shape("geo-area", "polygon:10,150;12,152;8,153"),
        ];
        let v = view(&s);
        for s in &s {
            let ((x0, y0), (x1, y1)) = s.geo.bounds();
            assert!(x0 * v.k >= v.x && x1 * v.k <= v.x + v.w, "east-west");
            assert!(y0 >= v.y && y1 <= v.y + v.h, "north-south");
        }
    }
}
