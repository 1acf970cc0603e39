# Shared words for rendering notifications in English.
language-en = English
language-zh-CN = Chinese
free-text-language = [written in { $language }]
courtesy-translation = courtesy translation ({ $language }): { $text }
glossary-note = glossary: “{ $term }” = “{ $equivalent }”
datetime = { $year }-{ $month }-{ $day } { $hour }:{ $minute }
time-both = { $utc } UTC ({ $local } { $zone })
window = { $start } to { $end }
geo-point = { $lat }° { $ns }, { $lon }° { $ew }
geo-north = N
geo-south = S
geo-east = E
geo-west = W
geo-circle = circle of radius { $radius } km around { $center }
geo-polygon = polygon { $points }
bearing = { $degrees }° true
duration-d = { $n } d
duration-h = { $n } h
duration-m = { $n } min
duration-s = { $n } s
decimal = { $number } { $unit }
unit-deg = degrees
unit-m = m
unit-km = km
unit-usv-per-h = µSv/h
message-ref = message { $id }
notification-header = { $title }
# Describing formats (detente formats show).
format-version = version { $version }
field-required = required
field-optional = optional
type-text = free text in the sender's language, at most { $max } characters
type-integer = whole number from { $min } to { $max }
type-decimal = number from { $min } to { $max } { $unit }
type-enum = one of: { $values }
type-datetime = UTC date-time, e.g. 2026-12-01T10:00:00Z
type-window = START/END, two UTC date-times, the end after the start
type-duration = duration from { $min } to { $max }, e.g. 90m, 2h30m, 1d
type-geo-point = LAT,LON in decimal degrees (WGS-84), e.g. 39.9,116.4
type-geo-area = circle:LAT,LON,RADIUS_KM or polygon:LAT,LON;LAT,LON;LAT,LON (WGS-84)
type-bearing = degrees clockwise from true north, 0 to less than 360
type-message-ref = id of another message (64 hex digits)
rule-order = { $second } must be after { $first }
rule-lead-time = { $field } must be at least { $min } after sending; if later, give the reason in { $late }
rule-required-when = { $field } is required when { $when } is { $values }
rule-absent-when = { $field } must be left out when { $when } is { $values }
# Time-zone names (tz- and the IANA id with / as -), shown in notifications, the console and
# the command line's inbox; a zone without a name here is shown by its IANA id.
tz-Asia-Shanghai = China Standard Time
tz-America-New_York = Eastern Time
tz-Europe-Moscow = Moscow Time
tz-Europe-London = UK time
