// The text format's building blocks: name rules, escaping, UTF-8 and number forms.
#include "common/metrics/text_format.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace lserve::metrics {
namespace {

TEST(TextFormatTest, MetricNamesFollowThePrometheusGrammar) {
  for (const char* name : {"a", "lserve_requests_total", "_x", "ns:sub:name", "A9_:"}) {
    EXPECT_TRUE(IsValidMetricName(name)) << name;
  }
  for (const char* name : {"", "9lives", "has-dash", "has space", "dot.ted", "ünï"}) {
    EXPECT_FALSE(IsValidMetricName(name)) << name;
  }
}

TEST(TextFormatTest, LabelNamesRejectColonsAndTheReservedPrefix) {
  for (const char* name : {"model", "_x", "le", "a1", "_"}) {
    EXPECT_TRUE(IsValidLabelName(name)) << name;
  }
  for (const char* name : {"", "__name__", "__x", "a:b", "1a", "a-b"}) {
    EXPECT_FALSE(IsValidLabelName(name)) << name;
  }
}

TEST(TextFormatTest, LabelValuesEscapeBackslashQuoteAndNewline) {
  std::string out;
  AppendEscapedLabelValue("a\\b\"c\nd\te", &out);
  EXPECT_EQ(out, "a\\\\b\\\"c\\nd\te");
}

TEST(TextFormatTest, HelpEscapesBackslashAndNewlineButNotQuotes) {
  std::string out;
  AppendEscapedHelp("say \"hi\"\\\nbye", &out);
  EXPECT_EQ(out, "say \"hi\"\\\\\\nbye");
}

TEST(TextFormatTest, ValuesUseShortestRoundTripForms) {
  EXPECT_EQ(FormatValue(0.0), "0");
  EXPECT_EQ(FormatValue(3.0), "3");
  EXPECT_EQ(FormatValue(-2.5), "-2.5");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(0.005), "0.005");
  EXPECT_EQ(FormatValue(1e21), "1e+21");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
  for (double v : {0.1 + 0.2, 1.0 / 3.0, 123456789.123, 5e-324, 1.7976931348623157e308}) {
    EXPECT_EQ(std::strtod(FormatValue(v).c_str(), nullptr), v) << FormatValue(v);
  }
}

TEST(TextFormatTest, Utf8ValidationRejectsMalformedSequences) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("\xC3\xA9t\xC3\xA9"));  // été
  EXPECT_TRUE(IsValidUtf8("\xE2\x82\xAC"));       // €
  EXPECT_TRUE(IsValidUtf8("\xF0\x9F\x98\x80"));   // U+1F600
  EXPECT_FALSE(IsValidUtf8("\xC3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xE2\x82"));          // truncated
  EXPECT_FALSE(IsValidUtf8("\x80"));              // stray continuation
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // UTF-16 surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8(std::string("ok\xC3(", 4)));  // bad continuation
}

}  // namespace
}  // namespace lserve::metrics
