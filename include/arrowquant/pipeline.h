// The main job: a checkpoint in, a quantized model file out. Tensors stream through
// selection -> quantization -> validation -> fallback -> the Parquet writer, several at a time,
// with memory bounded by the tensors in flight.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arrowquant/checkpoint.h"
#include "arrowquant/gptq.h"
#include "arrowquant/model_file.h"
#include "arrowquant/naming.h"
#include "arrowquant/quantize.h"
#include "arrowquant/status.h"

namespace arrowquant {

// An ordered selection rule: the first whose regex matches (a search in the qualified tensor
// name, e.g. "unet/conv_in.weight") decides. bits: 2/3/4/8, 0 = keep unquantized, -1 = the target
// width. threshold_scale tightens the validation threshold for sensitive layers.
struct SelectionRule {
  std::string pattern;
  int bits = 0;
  std::string why;
  double threshold_scale = 1.0;
  // A default of the tool's (not the user's): a size budget with measured sensitivity may give
  // the layer another width (first/last layers, the time embedding).
  bool overridable = false;
};

// Rules for tensors that stay in higher precision (norms, embeddings, time embedding, adaLN
// modulation, first and last layers), for a modality ("image", "video", "audio", "text", "code").
// The rows of the checkpoint's role table (arrowquant/naming.h) with an action, in its order.
std::vector<SelectionRule> DefaultSelectionRules(const std::string& modality,
                                                 const Naming& naming = {});

// What calibration found for one layer (keyed by the weight's qualified name). With spatial
// equalization scales the weight is stored as W / s (quantized or kept) and the runtime multiplies
// the layer's input by s; the time-aware activation grids were fitted on those scaled inputs.
struct ActivationPlan {
  std::optional<TimeAwareParams> time_aware;
  std::optional<SpatialParams> spatial;
  std::optional<ActivationStats> stats;
};

// Second moments of a layer's inputs from calibration: `fit` (what GPTQ minimises the output
// error on) and `check` (held-out rows: what validation measures the output error on).
// `sensitivity` (optional, one value per output row): how much the whole model's one-step
// prediction error grows per unit of that row's squared output error, measured with the FP model
// (random projections of its output, backpropagated: the diagonal Gauss-Newton / Fisher weight),
// relative to the prediction's energy. With it, the size budget's cost of a width is the
// layer's estimated contribution to the whole-model relative one-step error squared:
// sum_r sensitivity[r] * e_r H e_r^T / rows(H) on the held-out H.
struct LayerMoments {
  std::shared_ptr<const SecondMoments> fit, check;
  std::vector<double> sensitivity;
};

// One pipeline component's own settings ("vae" at 8 bits while "unet" takes 4): they replace the
// job's fields of the same names for that component's tensors, and a size budget is met by each
// component on its own (a VAE's layers never trade bytes with the denoiser's).
struct ComponentSettings {
  int bits = 4;
  std::optional<QuantSpec> spec;
  double max_rel_rmse = 0.12;
  double target_bpw = 0;
  bool allocate = false;
  bool keep = false;  // the whole component stays unquantized (NAME=keep)
};

// The width the size budget gave a layer (0: kept) and, where calibration measured it, the
// relative output error of exactly that quantization (held-out H): validation need not
// measure it again.
struct BudgetChoice {
  int bits = 0;
  double output_error = -1;  // < 0: not measured
};

// A whole job's size budgets (target_bpw / allocate; one per component with its own settings):
// each free layer's width, and how the budgets were met.
struct JobBudget {
  std::map<std::string, BudgetChoice> widths;
  std::string note;
};

struct PipelineConfig {
  int bits = 4;                      // target width; fallback climbs 2 -> 4 -> 8 -> keep
  std::optional<QuantSpec> spec;     // format at `bits` (default: QuantSpec::Recommended)
  double max_rel_rmse = 0.12;        // validation threshold on weights, per layer
  std::vector<SelectionRule> rules;  // user overrides first, then the defaults
  std::string modality;              // "" = detect
  DType keep_dtype = DType::kF16;    // float tensors kept unquantized are stored as this
  int threads = 1;
  uint64_t min_elements = 1024;  // smaller weights are kept (not worth their scales)
  bool fail_fast = false;        // stop at the first layer that misses its threshold
  // NaN/Inf in a weight: false = error naming the tensor and the count (default); true = keep
  // that tensor unquantized (keep_dtype; NaN and Inf survive the f16 conversion).
  bool keep_nonfinite = false;
  // > 0: a size budget in bits per weight of the model file (its non-tensor bytes estimated). Every
  // layer the rules give the target width is measured at 2, 3, 4 and 8 bits and kept, and widths
  // are assigned to minimise the total cost within the budget (the threshold fallback is then not
  // used): the layers' measured contributions to the one-step error where calibration measured
  // sensitivity (and then the default rules' fixed layers are free too), else output or weight
  // error.
  double target_bpw = 0;
  // The size budget sized by a profile rather than asked for: no layer goes below half of
  // `bits`. With target_bpw 0, the budget is what the free layers would take at `bits`
  // uniformly (the same size, redistributed by measured cost).
  bool allocate = false;
  std::map<std::string, ActivationPlan> activations;  // from calibration (may be empty)
  // Layers with moments are quantized by GPTQ and validated on their output error (relative,
  // on the held-out rows, against max_rel_rmse); the others by weight error.
  std::map<std::string, LayerMoments> moments;
  double gptq_damp = 0.01;
  bool gptq_act_order = false;     // GptqOptions::act_order
  std::string recipe_json = "{}";  // stored in the file as given
  std::string tool_version;
  // Per pipeline component (CheckpointTensor::component), settings that replace the ones above;
  // components not named here take the job's own.
  std::map<std::string, ComponentSettings> components;
  // This config as a kept component sees it (ForComponent): every tensor stays unquantized.
  bool keep_all = false;
  // A job run in parts (scale-out): the budget assigned once for the whole job (AssignBudgets),
  // and the tensors this run quantizes and writes, [part_begin, part_end) in checkpoint order.
  // MergeParts writes the parts' files as one, as a single run would have.
  std::optional<JobBudget> budget;
  size_t part_begin = 0;
  size_t part_end = SIZE_MAX;
  // > 0: the model is written as a Parquet dataset of files of at most this many payload bytes
  // (ModelDatasetOptions; one tensor larger than that gets a file of its own). A part's scratch
  // file is always one file.
  uint64_t max_file_bytes = 0;

  // This config as component `name` sees it (the job's own where it has no settings).
  PipelineConfig ForComponent(const std::string& name) const;

  // The format a layer gets at `width` bits: `spec` with that width (coded scales at that
  // width's recommended code size), or the recommended format of the width. Calibration fits
  // equalization with it, so that the search sees the format the layer is written in.
  QuantSpec SpecFor(int width) const;
};

struct LayerReport {
  std::string name;
  std::string component;  // CheckpointTensor::component
  std::vector<uint64_t> shape;
  std::string source_dtype;
  std::string action;  // "quantized" or "kept"
  std::string format;  // e.g. "int4-asym-g32-q7-search", or the kept dtype
  int bits = 0;
  std::optional<ErrorMetrics> metrics;
  std::vector<std::string> fallbacks;  // why each lower width was rejected
  std::string why;                     // for kept tensors: the rule or reason
  std::string method = "rtn";          // "gptq" (calibrated) or "rtn" (round to nearest)
  std::string validation = "weight";   // what the threshold was checked on: "output" or "weight"
  std::optional<double> output_error;  // relative output error on held-out calibration rows
  uint64_t source_bytes = 0;
  uint64_t stored_bytes = 0;
};

struct PipelineReport {
  std::string modality;
  std::string modality_reason;
  std::vector<LayerReport> layers;
  uint64_t source_bytes = 0;
  uint64_t stored_bytes = 0;
  uint64_t quantized_params = 0;
  uint64_t total_params = 0;
  bool threshold_missed = false;  // some layer fell back to `keep` because no width held
  std::string budget_note;        // with target_bpw: how the budget was met (or why not)
};

// Progress: bytes of source tensors done, of total. Return false to cancel.
using ProgressFn = std::function<bool(uint64_t done, uint64_t total, const std::string& tensor)>;

// What the selection rules decide for each tensor, without quantizing anything (--dry-run).
struct PlannedTensor {
  std::string name;
  int bits = 0;  // 0: kept unquantized
  double threshold = 0;
  std::string why;
  bool target_width = false;  // the width is the job's target (free for a size budget)
  bool overridable = false;   // fixed by a default rule that a measured budget may override
};
Result<std::vector<PlannedTensor>> PlanSelection(const Checkpoint& ck,
                                                 const PipelineConfig& config);

// The modality and how it was decided.
std::pair<std::string, std::string> DetectModality(const Checkpoint& ck);

// The job's size budgets, as RunPipeline assigns them (empty without target_bpw / allocate):
// computed once where a job runs in parts, each part given them in PipelineConfig::budget.
Result<JobBudget> AssignBudgets(const Checkpoint& ck, const PipelineConfig& config);

// Writes `out_path` (a file, or a dataset with max_file_bytes) from the model files of a job's
// parts (each RunPipeline with a part range), appended in tensor order as they are ready: every
// tensor's record as the part wrote it, under the job's metadata, so the file equals a single run's
// but for its creation time. Complete or not at all: a merger destroyed before Close(), or one
// whose Append failed, leaves nothing.
class PartMerger {
 public:
  static Result<std::unique_ptr<PartMerger>> Open(const Checkpoint& ck, const std::string& out_path,
                                                  const PipelineConfig& config,
                                                  const std::string& modality);
  ~PartMerger();
  Status Append(const std::string& part);
  Status Close();

 private:
  struct Impl;
  explicit PartMerger(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// PartMerger over `parts`, in one call.
Status MergeParts(const Checkpoint& ck, const std::vector<std::string>& parts,
                  const std::string& out_path, const PipelineConfig& config,
                  const std::string& modality);

// File `index` (1-based) of a job's dataset written on its own from the parts' scratch files
// (scale-out: the files written at once by several tasks): the tensors [first, first + count)
// of the parts' tensors in order, under the job's metadata, into `out_path` (whole or not at
// all). The file a ModelDatasetWriter writes as its file `index` (the split from
// DatasetFileStarts over the layers' stored_bytes), byte for byte but its creation time.
Status WriteDatasetFile(const Checkpoint& ck, const std::vector<std::string>& parts, size_t first,
                        size_t count, const std::string& out_path, const PipelineConfig& config,
                        const std::string& modality, int index);

// Runs the job; the output appears complete or not at all. A cancelled run returns kCancelled,
// a fail-fast run that misses a threshold kThresholdMissed; neither leaves a file behind.
Result<PipelineReport> RunPipeline(const Checkpoint& ck, const std::string& out_path,
                                   const PipelineConfig& config, const ProgressFn& progress = {});

}  // namespace arrowquant
