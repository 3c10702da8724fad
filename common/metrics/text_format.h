// Pieces of the Prometheus text exposition format 0.0.4 shared by the registry and its
// tests: name rules, escaping and number formatting. Kept apart from the registry so the
// format rules can be tested on their own.
#ifndef LSERVE_COMMON_METRICS_TEXT_FORMAT_H_
#define LSERVE_COMMON_METRICS_TEXT_FORMAT_H_

#include <string>
#include <string_view>

namespace lserve::metrics {

// The media type a scraper is told, so it parses the body as text format 0.0.4.
inline constexpr std::string_view kTextContentType = "text/plain; version=0.0.4; charset=utf-8";

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(std::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]* and not starting with "__" (reserved for Prometheus itself).
bool IsValidLabelName(std::string_view name);
// The format is UTF-8; one invalid byte sequence makes Prometheus reject the whole scrape.
bool IsValidUtf8(std::string_view text);

// Label values escape backslash, double quote and line feed.
void AppendEscapedLabelValue(std::string_view value, std::string* out);
// HELP text escapes backslash and line feed only (a quote is literal there).
void AppendEscapedHelp(std::string_view help, std::string* out);

// Shortest decimal that round-trips to the same double, or +Inf / -Inf / NaN: every form
// Go's strconv.ParseFloat, and so Prometheus, accepts.
void AppendValue(double value, std::string* out);
std::string FormatValue(double value);

}  // namespace lserve::metrics

#endif  // LSERVE_COMMON_METRICS_TEXT_FORMAT_H_
