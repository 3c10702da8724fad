// Defaults of the public generation API that the router and every worker must agree on.
#ifndef LSERVE_NET_GENERATION_DEFAULTS_H_
#define LSERVE_NET_GENERATION_DEFAULTS_H_

namespace lserve::net {

// SamplingParams.max_tokens when a request leaves it 0.
inline constexpr int kDefaultMaxTokens = 16;

}  // namespace lserve::net

#endif  // LSERVE_NET_GENERATION_DEFAULTS_H_
