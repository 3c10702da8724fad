// A minimal HTTP/1.0 GET against 127.0.0.1 for tests that read Prometheus endpoints, and
// a reader of one sample's value from the text exposition format.
#ifndef LSERVE_TESTS_TESTING_HTTP_GET_H_
#define LSERVE_TESTS_TESTING_HTTP_GET_H_

#include <string>

#include "absl/status/statusor.h"

namespace lserve::testing {

// The body of GET http://127.0.0.1:port/path; an error unless the status is 200.
absl::StatusOr<std::string> HttpGet(int port, const std::string& path);

// The sum of the values of the samples named `name` whose label set contains every
// label=value pair written in `labels` ("pool=\"decode\"", or "" for all).
double SampleSum(const std::string& exposition, const std::string& name,
                 const std::string& labels = "");

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_TESTING_HTTP_GET_H_
