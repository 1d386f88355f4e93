// ExtProcService: kvgated as Envoy's external processor
// (envoy.service.ext_proc.v3.ExternalProcessor/Process), so an Envoy in
// front of an OpenAI-compatible engine gates each completion request on GPU
// memory with no client changes. See deploy/envoy/README.md.
//
// One bidirectional stream per HTTP request, one reactor per stream, no
// thread per stream. What to answer is ExtProcGate's decision
// (ext_proc_gate.h, pure and unit-tested); the reactor moves the messages,
// asks the gate, and admits, cancels and releases on the controller:
//   request_headers  the gate checks :path, tenant, priority and (when
//                    trusted) the token-count header; CONTINUE (ungated paths,
//                    methods other than POST and bodiless requests pass
//                    through).
//   request_body     chunks accumulate (BUFFERED sends one, STREAMED many;
//                    their answers are held) up to end_of_stream or trailers;
//                    then the gate parses the body and sizes the batch, and
//                    the ticket is admitted on the model's Controller:
//                    - ADMITTED: every held chunk is answered CONTINUE, the
//                      last with x-kvgate-decision / -reserved-bytes headers
//                      (and, when the gate wrote default_max_tokens into
//                      the body, the new body and its content-length;
//                      earlier chunks are cleared);
//                    - queued: Envoy is told to wait (override_message_timeout
//                      = max_hold + 1 s) and the answer comes when the
//                      controller admits or rejects it;
//                    - rejected: ImmediateResponse 429 + Retry-After (503 for
//                      MEMORY_PRESSURE, DRAINING or not ready) with an
//                      OpenAI-style JSON error; 400 for a body that is not
//                      JSON or misses fields, 404 for an unknown model, 413
//                      for a body over max_body_bytes.
//   response_headers CONTINUE, adding the x-kvgate-* headers for the client.
//   response_body    CONTINUE; end_of_stream releases the lease.
//   stream end       half-close, cancel (client abort, upstream reset, Envoy
//                    gone) releases the lease and leaves the queue.
// Each lease is released exactly once.
#ifndef KVGATE_PLUGIN_EXT_PROC_EXT_PROC_SERVICE_H_
#define KVGATE_PLUGIN_EXT_PROC_EXT_PROC_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "envoy/service/ext_proc/v3/external_processor.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/model_pool.h"
#include "plugin/base/call_tracker.h"
#include "plugin/ext_proc/ext_proc_gate.h"
#include "plugin/ext_proc/ext_proc_options.h"

namespace kvgate {

// Envoy's ExternalProcessor service on kvgated: one Stream reactor per HTTP
// request, deciding with an ExtProcGate and admitting on the pools'
// controllers (see the top of this file). Thread-safe.
class ExtProcService final
    : public envoy::service::ext_proc::v3::ExternalProcessor::CallbackService {
 public:
  // `registry` and `clock` must outlive the service.
  ExtProcService(const ModelRegistry* registry, Clock* clock,
                 ExtProcOptions options);

  // Until ready, gated requests are answered 503.
  void SetReady(bool ready) { ready_.store(ready); }
  // From now on gated requests are answered 503 (DRAINING); requests already
  // admitted go on to the end of their responses.
  void StartDraining() { draining_.store(true); }
  // Waits until every stream is done with (deleted); false if some are not
  // after `timeout`. For shutdown, after the server has stopped.
  bool WaitForCalls(absl::Duration timeout) { return calls_.WaitIdle(timeout); }

  grpc::ServerBidiReactor<envoy::service::ext_proc::v3::ProcessingRequest,
                          envoy::service::ext_proc::v3::ProcessingResponse>*
  Process(grpc::CallbackServerContext* context) override;

  const ExtProcOptions& options() const { return gate_.options(); }

 private:
  class Stream;

  ServingState serving_state() const {
    return {ready_.load(std::memory_order_relaxed),
            draining_.load(std::memory_order_relaxed)};
  }

  // Every decision on a request's headers and body.
  const ExtProcGate gate_;
  Clock* clock_;
  // Request ids for the controller: unique per stream, never taken from the
  // client (two requests sharing an id would share a lease).
  const std::string id_prefix_;
  std::atomic<uint64_t> next_stream_{1};
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  CallTracker calls_;  // Streams alive
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_EXT_PROC_EXT_PROC_SERVICE_H_
