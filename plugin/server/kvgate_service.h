// AdmissionService: the kvgate.v1.Admission gRPC service on the callback
// API. It validates and translates requests at the edge (the only place,
// with config.cc, that sees generated proto types) and hands bytes to each
// model pool's Controller.
//
// No thread waits per call: a queued Admit keeps its reactor, and whoever
// frees the memory (Release, the ticker's Tick, a cancel) finishes it through
// the controller's callback.
#ifndef KVGATE_PLUGIN_SERVER_KVGATE_SERVICE_H_
#define KVGATE_PLUGIN_SERVER_KVGATE_SERVICE_H_

#include <atomic>
#include <memory>

#include "grpcpp/grpcpp.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "metrics/metrics.h"
#include "plugin/admission/clock.h"
#include "plugin/admission/model_pool.h"
#include "plugin/base/call_tracker.h"
#include "plugin/security/auth.h"

namespace kvgate {

class AdmissionService final : public kvgate::v1::Admission::CallbackService {
 public:
  struct Options {
    // Most sequences in one Admit or Estimate.
    int max_sequences = 4096;
    // Longest request_id, tenant and model accepted.
    size_t max_id_bytes = 128;
    // When set (must outlive the service), every Admission call must
    // authenticate (UNAUTHENTICATED otherwise); an Admit is accounted to the
    // caller's tenant, whatever its tenant field says, and its CRITICAL
    // priority is served as STANDARD unless the caller may use CRITICAL.
    // Null: callers are trusted as they say.
    const Authenticator* authenticator = nullptr;
  };

  // `registry`, `clock` and `metrics` (may be null) must outlive the service.
  AdmissionService(const ModelRegistry* registry, Clock* clock,
                   KvgateMetrics* metrics, Options options);

  // Until ready, every call is answered UNAVAILABLE.
  void SetReady(bool ready) { ready_.store(ready); }
  // From now on Admit answers REJECTED/DRAINING; Release and Renew go on.
  void StartDraining() { draining_.store(true); }
  // Waits until every Admit that waited in a queue is done with (its
  // reactor's OnDone has run); false if some are not after `timeout`. For
  // shutdown, after the server has stopped.
  bool WaitForCalls(absl::Duration timeout) { return calls_.WaitIdle(timeout); }

  grpc::ServerUnaryReactor* Admit(grpc::CallbackServerContext* context,
                                  const kvgate::v1::AdmitRequest* request,
                                  kvgate::v1::AdmitResponse* response) override;
  grpc::ServerUnaryReactor* Release(
      grpc::CallbackServerContext* context,
      const kvgate::v1::ReleaseRequest* request,
      kvgate::v1::ReleaseResponse* response) override;
  grpc::ServerUnaryReactor* Renew(grpc::CallbackServerContext* context,
                                  const kvgate::v1::RenewRequest* request,
                                  kvgate::v1::RenewResponse* response) override;
  grpc::ServerUnaryReactor* GetBudget(
      grpc::CallbackServerContext* context,
      const kvgate::v1::GetBudgetRequest* request,
      kvgate::v1::Budget* response) override;
  grpc::ServerUnaryReactor* Estimate(
      grpc::CallbackServerContext* context,
      const kvgate::v1::EstimateRequest* request,
      kvgate::v1::EstimateResponse* response) override;

 private:
  struct AdmitCall;
  class AdmitReactor;

  // With an authenticator, the caller's identity (into `caller` when not
  // null) or UNAUTHENTICATED; OK without one.
  grpc::Status Authorize(grpc::CallbackServerContext* context,
                         CallerIdentity* caller) const;

  // Finds the pool for `model`; NOT_FOUND / UNAVAILABLE as a gRPC status.
  grpc::Status FindPool(const std::string& model, ModelPool** pool) const;

  // The ticket for an Admit to `pool`: validated, accounted to the
  // authenticated *caller (its tenant moved out; with an authenticator) and
  // with its deadline capped at the gRPC one.
  absl::StatusOr<AdmitTicket> MakeTicket(
      const grpc::CallbackServerContext& context,
      const kvgate::v1::AdmitRequest& request, const ModelPool& pool,
      CallerIdentity* caller, absl::Time now) const;

  // Hands `ticket` to `controller` and answers the call: inline when decided
  // at once, else through an AdmitReactor that the controller's callback
  // finishes.
  grpc::ServerUnaryReactor* AdmitToController(
      grpc::CallbackServerContext* context, Controller* controller,
      AdmitTicket&& ticket, absl::Time now,
      kvgate::v1::AdmitResponse* response);

  // For a queued Admit: moves *call into a new AdmitReactor and returns it
  // (for gRPC), unless the answer arrived from another thread in the
  // meantime; then *call is back and the result null.
  AdmitReactor* HandOver(grpc::CallbackServerContext* context,
                         Controller* controller, uint64_t handle,
                         absl::Time now, kvgate::v1::AdmitResponse* response,
                         std::unique_ptr<AdmitCall>* call);

  const ModelRegistry* registry_;
  Clock* clock_;
  KvgateMetrics* metrics_;
  Options options_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  CallTracker calls_;  // AdmitReactors alive
};

}  // namespace kvgate

#endif  // KVGATE_PLUGIN_SERVER_KVGATE_SERVICE_H_
