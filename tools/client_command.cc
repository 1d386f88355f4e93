// kvgate admit | release | renew | budget | demo: a client of kvgated for
// manual use, and a short demonstration load against a running sidecar.
#include <chrono>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpcpp/grpcpp.h"
#include "kvgate/v1/admission.grpc.pb.h"
#include "tools/cli_client_flags.h"
#include "tools/cli_flags.h"
#include "tools/cli_output.h"
#include "tools/commands.h"

namespace kvgate {
namespace {

using kvgate::v1::Admission;

// One line on stderr for a failed RPC; exit 1 (the operation failed). A
// refusal by kvgated's auth says which setting gives the credentials.
int RpcFailed(const std::string& command, const grpc::Status& status) {
  std::string prefix;
  std::string hint;
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      prefix = "kvgated unavailable: ";
      break;
    case grpc::StatusCode::UNAUTHENTICATED:
      prefix = "kvgated refused the call (UNAUTHENTICATED): ";
      hint =
          "; give a token with --token-file or KVGATE_TOKEN_FILE, or a client "
          "certificate with --tls-cert-file and --tls-key-file";
      break;
    case grpc::StatusCode::PERMISSION_DENIED:
      prefix = "kvgated refused the call (PERMISSION_DENIED): ";
      break;
    default:
      break;
  }
  std::cerr << "kvgate " << command << ": error: " << prefix
            << status.error_message() << " (gRPC code "
            << static_cast<int>(status.error_code()) << ")" << hint
            << std::endl;
  return kExitFailure;
}

void SetSeconds(double seconds, google::protobuf::Duration* out) {
  const int64_t whole = static_cast<int64_t>(seconds);
  out->set_seconds(whole);
  out->set_nanos(
      static_cast<int32_t>((seconds - static_cast<double>(whole)) * 1e9));
}

double Seconds(const google::protobuf::Duration& d) {
  return static_cast<double>(d.seconds()) + d.nanos() / 1e9;
}

// Parses flags and loads the client's token and TLS files; returns -1 to
// continue, else the exit code.
int ParseFlags(const std::string& command, FlagSet& flags, ClientFlags& client,
               const CommandArgs& args) {
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    return FailUsage(command, s);
  }
  if (flags.help_requested()) {
    std::cout << flags.Usage();
    return kExitOk;
  }
  if (absl::Status s = client.Load(); !s.ok()) return FailUsage(command, s);
  return -1;
}

absl::StatusOr<kvgate::v1::Priority> ParsePriority(const std::string& name) {
  if (name == "critical") return kvgate::v1::CRITICAL;
  if (name == "standard") return kvgate::v1::STANDARD;
  if (name == "sheddable") return kvgate::v1::SHEDDABLE;
  return absl::InvalidArgumentError(absl::StrCat(
      "--priority=", name, ": expected critical, standard or sheddable"));
}

std::string NewRequestId() {
  absl::BitGen gen;
  return absl::StrFormat("cli-%016x", absl::Uniform<uint64_t>(gen));
}

void PrintAdmit(const kvgate::v1::AdmitResponse& r, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["decision"] = kvgate::v1::Decision_Name(r.decision());
    j["lease_id"] = r.lease_id();
    j["reason"] = r.reason();
    j["reserved_bytes"] = r.reserved_bytes();
    j["retry_after_seconds"] = Seconds(r.retry_after());
    j["queued_for_seconds"] = Seconds(r.queued_for());
    j["message"] = r.message();
    PrintJson(j);
    return;
  }
  TableRows rows = {{"decision", kvgate::v1::Decision_Name(r.decision())}};
  if (r.decision() == kvgate::v1::ADMITTED) {
    rows.push_back({"lease_id", r.lease_id()});
    rows.push_back({"reserved", FormatBytes(r.reserved_bytes())});
  } else {
    rows.push_back({"reason", r.reason()});
    rows.push_back(
        {"retry_after", absl::StrFormat("%.3f s", Seconds(r.retry_after()))});
    if (!r.message().empty()) rows.push_back({"message", r.message()});
  }
  rows.push_back(
      {"queued_for", absl::StrFormat("%.3f s", Seconds(r.queued_for()))});
  PrintTable("", rows);
}

void PrintBudget(const kvgate::v1::Budget& b, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["capacity_bytes"] = b.capacity_bytes();
    j["weights_bytes"] = b.weights_bytes();
    j["reserved_bytes"] = b.reserved_bytes();
    j["free_bytes"] = b.free_bytes();
    j["device_free_bytes"] = b.device_free_bytes();
    j["activation_reserve_bytes"] = b.activation_reserve_bytes();
    j["active_leases"] = b.active_leases();
    j["queued_requests"] = b.queued_requests();
    PrintJson(j);
    return;
  }
  PrintTable("",
             {{"capacity", FormatBytes(b.capacity_bytes())},
              {"weights", FormatBytes(b.weights_bytes())},
              {"reserved", FormatBytes(b.reserved_bytes())},
              {"free", FormatBytes(b.free_bytes())},
              {"device free", FormatBytes(b.device_free_bytes())},
              {"activation reserve", FormatBytes(b.activation_reserve_bytes())},
              {"active leases", absl::StrCat(b.active_leases())},
              {"queued requests", absl::StrCat(b.queued_requests())}});
}

}  // namespace

int RunAdmitCommand(const CommandArgs& args) {
  ClientFlags client;
  std::string model = "llama-3-8b";
  std::string request_id;
  std::string tenant;
  std::string priority = "standard";
  uint64_t batch = 1;
  uint64_t prompt_tokens = 512;
  uint64_t max_new_tokens = 512;
  double max_queue_wait = 0;
  FlagSet flags("admit",
                "Ask kvgated for memory for a batch; prints the decision and "
                "the lease to pass to `kvgate release`.");
  client.Register(flags);
  flags.AddString("model", &model, "model name as configured in kvgated");
  flags.AddString("request-id", &request_id, "request id (default: random)");
  flags.AddString("tenant", &tenant, "tenant for fairness");
  flags.AddString("priority", &priority, "critical, standard or sheddable");
  flags.AddUint64("batch", &batch, "sequences in the batch");
  flags.AddUint64("prompt-tokens", &prompt_tokens,
                  "prompt tokens per sequence");
  flags.AddUint64("max-new-tokens", &max_new_tokens,
                  "most generated tokens per sequence");
  flags.AddDouble("max-queue-wait", &max_queue_wait,
                  "longest wait in the queue in seconds (0: server default)");
  if (int rc = ParseFlags("admit", flags, client, args); rc >= 0) return rc;
  absl::StatusOr<kvgate::v1::Priority> p = ParsePriority(priority);
  if (!p.ok()) return FailUsage("admit", p.status());
  if (batch == 0 || batch > 100000 || prompt_tokens > UINT32_MAX ||
      max_new_tokens > UINT32_MAX || max_queue_wait < 0) {
    return FailUsage("admit", absl::InvalidArgumentError(
                                  "--batch must be 1..100000, token counts "
                                  "below 2^32, --max-queue-wait >= 0"));
  }
  kvgate::v1::AdmitRequest request;
  request.set_request_id(request_id.empty() ? NewRequestId() : request_id);
  request.set_model(model);
  request.set_tenant(tenant);
  request.set_priority(*p);
  for (uint64_t i = 0; i < batch; ++i) {
    kvgate::v1::Sequence* s = request.add_sequences();
    s->set_prompt_tokens(static_cast<uint32_t>(prompt_tokens));
    s->set_max_new_tokens(static_cast<uint32_t>(max_new_tokens));
  }
  if (max_queue_wait > 0) {
    SetSeconds(max_queue_wait, request.mutable_max_queue_wait());
  }
  grpc::ClientContext context;
  client.Arm(context);
  kvgate::v1::AdmitResponse response;
  grpc::Status status = client.Connect()->Admit(&context, request, &response);
  if (!status.ok()) return RpcFailed("admit", status);
  PrintAdmit(response, client.json);
  return kExitOk;
}

int RunReleaseCommand(const CommandArgs& args) {
  ClientFlags client;
  std::string lease_id;
  FlagSet flags("release", "Release a lease (idempotent).");
  client.Register(flags);
  flags.AddString("lease-id", &lease_id, "the lease from `kvgate admit`");
  if (int rc = ParseFlags("release", flags, client, args); rc >= 0) return rc;
  if (lease_id.empty()) {
    return FailUsage("release",
                     absl::InvalidArgumentError("--lease-id is required"));
  }
  kvgate::v1::ReleaseRequest request;
  request.set_lease_id(lease_id);
  kvgate::v1::ReleaseResponse response;
  grpc::ClientContext context;
  client.Arm(context);
  grpc::Status status = client.Connect()->Release(&context, request, &response);
  if (!status.ok()) return RpcFailed("release", status);
  if (client.json) {
    PrintJson({{"released_bytes", response.released_bytes()}});
  } else {
    PrintTable("", {{"released", FormatBytes(response.released_bytes())}});
  }
  return kExitOk;
}

int RunRenewCommand(const CommandArgs& args) {
  ClientFlags client;
  std::string lease_id;
  FlagSet flags("renew", "Extend a live lease by the server's lease TTL.");
  client.Register(flags);
  flags.AddString("lease-id", &lease_id, "the lease from `kvgate admit`");
  if (int rc = ParseFlags("renew", flags, client, args); rc >= 0) return rc;
  if (lease_id.empty()) {
    return FailUsage("renew",
                     absl::InvalidArgumentError("--lease-id is required"));
  }
  kvgate::v1::RenewRequest request;
  request.set_lease_id(lease_id);
  kvgate::v1::RenewResponse response;
  grpc::ClientContext context;
  client.Arm(context);
  grpc::Status status = client.Connect()->Renew(&context, request, &response);
  if (!status.ok()) return RpcFailed("renew", status);
  if (client.json) {
    PrintJson({{"ttl_seconds", Seconds(response.ttl())}});
  } else {
    PrintTable("",
               {{"ttl", absl::StrFormat("%.1f s", Seconds(response.ttl()))}});
  }
  return kExitOk;
}

int RunBudgetCommand(const CommandArgs& args) {
  ClientFlags client;
  std::string model = "llama-3-8b";
  FlagSet flags("budget", "Show a model pool's memory budget.");
  client.Register(flags);
  flags.AddString("model", &model, "model name as configured in kvgated");
  if (int rc = ParseFlags("budget", flags, client, args); rc >= 0) return rc;
  kvgate::v1::GetBudgetRequest request;
  request.set_model(model);
  kvgate::v1::Budget response;
  grpc::ClientContext context;
  client.Arm(context);
  grpc::Status status =
      client.Connect()->GetBudget(&context, request, &response);
  if (!status.ok()) return RpcFailed("budget", status);
  PrintBudget(response, client.json);
  return kExitOk;
}

namespace {

// ----------------------------------------------------------------- demo ---

// The demo's calls to one model of one kvgated, each with the flags' deadline.
class DemoClient {
 public:
  DemoClient(const ClientFlags& flags, std::string model)
      : flags_(flags), model_(std::move(model)), stub_(flags.Connect()) {}

  const std::string& model() const { return model_; }

  grpc::Status Budget(kvgate::v1::Budget* b) {
    grpc::ClientContext c;
    flags_.Arm(c);
    kvgate::v1::GetBudgetRequest r;
    r.set_model(model_);
    return stub_->GetBudget(&c, r, b);
  }

  // Admits `batch` sequences of prompt + max_new tokens, for tenant
  // id[0..4), waiting in the queue up to `wait` seconds (0: the default).
  grpc::Status Admit(const std::string& id, int batch, uint32_t prompt,
                     uint32_t max_new, double wait,
                     kvgate::v1::Priority priority,
                     kvgate::v1::AdmitResponse* out) {
    kvgate::v1::AdmitRequest r;
    r.set_request_id(id);
    r.set_model(model_);
    r.set_tenant(id.substr(0, 4));
    r.set_priority(priority);
    for (int i = 0; i < batch; ++i) {
      auto* s = r.add_sequences();
      s->set_prompt_tokens(prompt);
      s->set_max_new_tokens(max_new);
    }
    if (wait > 0) {
      SetSeconds(wait, r.mutable_max_queue_wait());
    }
    grpc::ClientContext c;
    flags_.Arm(c);
    return stub_->Admit(&c, r, out);
  }

  grpc::Status Release(const std::string& lease) {
    grpc::ClientContext c;
    flags_.Arm(c);
    kvgate::v1::ReleaseRequest r;
    r.set_lease_id(lease);
    kvgate::v1::ReleaseResponse out;
    return stub_->Release(&c, r, &out);
  }

 private:
  const ClientFlags& flags_;
  const std::string model_;
  std::unique_ptr<Admission::Stub> stub_;
};

// Where the demo's steps go: a line each on stdout, or with --json one JSON
// object printed at the end ({"address", "model", "capacity_bytes",
// "weights_bytes", "steps": [{"step": ..., ...}]}).
class DemoOutput {
 public:
  explicit DemoOutput(bool json) : json_(json) {}

  // The step `step` (its "step" set to `name`), or the line `text`.
  void Step(const std::string& name, nlohmann::ordered_json step,
            const std::string& text) {
    if (!json_) {
      std::cout << text << std::endl;
      return;
    }
    nlohmann::ordered_json entry;
    entry["step"] = name;
    entry.update(step);
    report_["steps"].push_back(std::move(entry));
  }

  // One answer: what was asked, the decision, reason, reservation, time
  // queued and, when rejected, retry_after.
  void Answer(const std::string& what, const kvgate::v1::AdmitResponse& r) {
    const bool retry = r.decision() == kvgate::v1::REJECTED &&
                       r.retry_after().nanos() + r.retry_after().seconds() > 0;
    nlohmann::ordered_json j;
    j["decision"] = kvgate::v1::Decision_Name(r.decision());
    j["reason"] = r.reason();
    j["reserved_bytes"] = r.reserved_bytes();
    j["queued_seconds"] = Seconds(r.queued_for());
    if (retry) j["retry_after_seconds"] = Seconds(r.retry_after());
    Step(what, std::move(j),
         absl::StrFormat("  %-34s -> %-8s %-14s reserved %-22s queued %.3fs",
                         what, kvgate::v1::Decision_Name(r.decision()),
                         r.reason(), FormatBytes(r.reserved_bytes()),
                         Seconds(r.queued_for())) +
             (retry ? absl::StrFormat(" retry_after %.3fs",
                                      Seconds(r.retry_after()))
                    : ""));
  }

  // The budget after a step, as counts and bytes.
  void Budget(const std::string& name, const kvgate::v1::Budget& b) {
    nlohmann::ordered_json j;
    j["active_leases"] = b.active_leases();
    j["reserved_bytes"] = b.reserved_bytes();
    j["free_bytes"] = b.free_bytes();
    Step(name, std::move(j),
         absl::StrCat("  ", name, ": ", b.active_leases(), " leases, reserved ",
                      FormatBytes(b.reserved_bytes()), ", free ",
                      FormatBytes(b.free_bytes())));
  }

  nlohmann::ordered_json& report() { return report_; }
  bool json() const { return json_; }

 private:
  const bool json_;
  nlohmann::ordered_json report_;
};

// 1. Fills the budget with batches of 32 x (2048 + 2048) tokens, adding the
// leases to `leases`. Returns -1 to go on, else the exit code.
int FillDemoBudget(DemoClient& demo, DemoOutput& out,
                   std::vector<std::string>& leases) {
  kvgate::v1::AdmitResponse r;
  for (int i = 0; i < 64; ++i) {
    const std::string id = absl::StrCat("fill-", i);
    if (grpc::Status s =
            demo.Admit(id, 32, 2048, 2048, 0.05, kvgate::v1::STANDARD, &r);
        !s.ok()) {
      return RpcFailed("demo", s);
    }
    out.Answer(absl::StrCat("admit ", id, " (32 x 4096 tok)"), r);
    if (r.decision() != kvgate::v1::ADMITTED) break;
    leases.push_back(r.lease_id());
  }
  kvgate::v1::Budget b;
  if (demo.Budget(&b).ok()) out.Budget("budget", b);
  return -1;
}

// 2. A request that waits in the queue until the first of `leases` is
// released; its lease joins `leases`. Returns -1 to go on, else the exit
// code.
int QueueUntilReleased(DemoClient& demo, DemoOutput& out,
                       std::vector<std::string>& leases) {
  kvgate::v1::AdmitResponse queued;
  grpc::Status queued_status;
  std::thread waiter([&] {
    queued_status = demo.Admit("wait-1", 32, 2048, 2048, 5.0,
                               kvgate::v1::CRITICAL, &queued);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kvgate::v1::Budget b;
  const std::string released = leases.empty() ? "nothing" : leases.front();
  if (demo.Budget(&b).ok()) {
    out.Step(
        "queued",
        {{"queued_requests", b.queued_requests()}, {"releasing", released}},
        absl::StrCat("  queued requests: ", b.queued_requests(), "; releasing ",
                     released));
  }
  if (!leases.empty()) {
    demo.Release(leases.front());
    leases.erase(leases.begin());
  }
  waiter.join();
  if (!queued_status.ok()) return RpcFailed("demo", queued_status);
  out.Answer("admit wait-1 (queued, CRITICAL)", queued);
  if (queued.decision() == kvgate::v1::ADMITTED)
    leases.push_back(queued.lease_id());
  return -1;
}

// 3. A queue timeout, 4. a batch that can never fit, 5. a malformed one.
void ShowRefusals(DemoClient& demo, DemoOutput& out) {
  kvgate::v1::AdmitResponse r;
  if (grpc::Status s =
          demo.Admit("late-1", 32, 2048, 2048, 0.2, kvgate::v1::SHEDDABLE, &r);
      s.ok()) {
    out.Answer("admit late-1 (max_queue_wait 0.2s)", r);
  }
  if (grpc::Status s =
          demo.Admit("huge-1", 4096, 4096, 4096, 0, kvgate::v1::STANDARD, &r);
      s.ok()) {
    out.Answer("admit huge-1 (4096 x 8192 tok)", r);
  }
  const std::string what = "admit bad-1 (prompt_tokens 0)";
  grpc::Status bad = demo.Admit("bad-1", 1, 0, 16, 0, kvgate::v1::STANDARD, &r);
  out.Step(
      what,
      {{"grpc_code", static_cast<int>(bad.error_code())},
       {"error", bad.error_message()}},
      absl::StrFormat("  %-34s -> gRPC %d %s", what,
                      static_cast<int>(bad.error_code()), bad.error_message()));
}

}  // namespace

// A short scripted load that shows each kind of answer against the embedded
// default: admits until the budget is full, a request that queues and is
// admitted when memory is released, a queue timeout, a request that can
// never fit, and a malformed one. --json: one JSON object (DemoOutput).
int RunDemoCommand(const CommandArgs& args) {
  ClientFlags client;
  std::string model = "llama-3-8b";
  FlagSet flags("demo", "Run a short demonstration load against kvgated.");
  client.Register(flags);
  flags.AddString("model", &model, "model name as configured in kvgated");
  if (int rc = ParseFlags("demo", flags, client, args); rc >= 0) return rc;
  DemoClient demo(client, model);
  DemoOutput out(client.json);

  kvgate::v1::Budget b;
  if (grpc::Status s = demo.Budget(&b); !s.ok()) return RpcFailed("demo", s);
  out.report()["address"] = client.address;
  out.report()["model"] = model;
  out.report()["capacity_bytes"] = b.capacity_bytes();
  out.report()["weights_bytes"] = b.weights_bytes();
  if (!out.json()) {
    std::cout << "kvgate demo against " << client.address << " model " << model
              << "\n  capacity " << FormatBytes(b.capacity_bytes())
              << ", weights " << FormatBytes(b.weights_bytes()) << std::endl;
  }

  std::vector<std::string> leases;
  if (int rc = FillDemoBudget(demo, out, leases); rc >= 0) return rc;
  if (int rc = QueueUntilReleased(demo, out, leases); rc >= 0) return rc;
  ShowRefusals(demo, out);

  // Release everything: the budget returns to zero.
  for (const std::string& lease : leases) demo.Release(lease);
  if (demo.Budget(&b).ok()) out.Budget("after releasing all", b);
  if (out.json()) PrintJson(out.report());
  return kExitOk;
}

}  // namespace kvgate
