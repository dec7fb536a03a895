// Vietnamese and English. The browser's language picks one; the switch keeps the choice
// (localStorage: a preference, not a secret). Dates and times are shown in Asia/Ho_Chi_Minh.

export const ZONE = "Asia/Ho_Chi_Minh";

const MESSAGES = {
  en: {
    title: "xacthuc compliance console",
    sign_in: "Sign in",
    sign_out: "Sign out",
    api_key: "Auditor API key",
    api_key_hint: "Kept in this browser tab only (session storage), never in a URL.",
    vkey: "Log verifier key (pinned)",
    vkey_hint: "From the operator (`xacthuc audit log-key`), not from this server. Kept in this browser.",
    signed_in_as: "Platform {platform}, key {key}",
    nav_overview: "Overview",
    nav_aging: "Aging out",
    nav_account: "Account history",
    nav_log: "Log",
    nav_export: "Export",
    lang_switch: "Tiếng Việt",
    from: "From",
    to: "To (inclusive)",
    apply: "Show",
    loading: "Loading…",
    period: "{from} – {to}",
    overview_title: "Overview",
    server_counts_note:
      "Counts computed by the server from the log. For counts verified offline: `xacthuc audit report --checkpoint`.",
    all_counts: "All counts of the period",
    key: "Figure",
    count: "Count",
    chart_methods: "Accounts verified, by method, per day",
    chart_guardian: "Guardian-managed and commercial-livestream attestations, per day",
    chart_locks: "Lockouts and account locks (R7), per day",
    chart_sms: "SMS delivery failures, per day",
    no_data: "No records in this period.",
    aging_title: "Accounts aging out",
    aging_note: "Guardian-managed children whose 16th birthday falls in the period: their links end then.",
    aging_count: "{n} accounts",
    more: "More",
    account_title: "Account history",
    account_id: "Account id",
    show: "Show",
    index: "Leaf index",
    time: "Time (Asia/Ho_Chi_Minh)",
    event: "Event",
    outcome: "Outcome",
    reason: "Reason",
    proof: "Inclusion proof",
    record: "Record as stored",
    state: "Verification",
    no_records: "No records for this account.",
    log_title: "The log",
    log_size: "Records in the log",
    checkpoint: "Latest checkpoint",
    origin: "Origin",
    tree_size: "Tree size",
    root_hash: "Root hash",
    signed_at: "Signed at",
    signature: "Signed note",
    pinned_key: "Pinned verifier key",
    server_key: "Key the server names",
    keys_match: "same as the pinned key",
    keys_differ: "differs from the pinned key",
    chart_tree: "Tree size of the last checkpoint of each day",
    problem: "The server refuses to sign: {problem}",
    export_title: "Export",
    export_note:
      "The records of the period as JSON Lines, each with its index and leaf hash. Verify a whole-log export offline with `xacthuc audit verify` and the checkpoint.",
    export_period: "Download the period",
    export_all: "Download the whole log",
    export_checkpoint: "Download the checkpoint",
    exported: "Downloaded records {range}.",
    verified: "Verified",
    not_verified: "Not verified",
    pending: "Not yet in a checkpoint",
    verdict_ok: "Verified in this browser: checkpoint of {size} records signed by the pinned key; {n} records on screen are in it.",
    verdict_ok_cp: "Verified in this browser: checkpoint of {size} records signed by the pinned key.",
    verdict_bad_records: "NOT VERIFIED: {bad} of {n} records on screen do not match the signed checkpoint.",
    verdict_pending: "{n} records on screen are newer than the checkpoint and not verified yet.",
    verdict_bad: "NOT VERIFIED: {why}",
    why_no_key: "no verifier key is pinned",
    why_bad_key: "the pinned verifier key is malformed",
    why_bad_note: "the checkpoint is not a well-formed signed note",
    why_bad_signature: "the checkpoint's signature by the pinned key is invalid",
    why_no_signature: "the checkpoint carries no signature by the pinned key",
    why_bad_checkpoint: "the checkpoint body is malformed",
    why_bad_base64: "the checkpoint holds invalid base64",
    why_wrong_origin: "the checkpoint is of another log",
    why_rollback: "the log is shorter than a checkpoint this browser verified before (rolled back)",
    why_fork: "the checkpoint does not extend the one this browser verified before (the log was rewritten)",
    consistent_with: "It extends the checkpoint of {size} records this browser verified on {at} (consistency proof checked).",
    why_no_crypto: "this browser offers no WebCrypto Ed25519 here (HTTPS or localhost is needed)",
    err_CREDENTIAL_INVALID: "This API key is not valid.",
    err_CREDENTIAL_MISSING: "Enter an API key.",
    err_ROLE_NOT_ALLOWED: "This key is not an auditor key: the console is for auditors only.",
    err_FIELD_INVALID: "Invalid input: {message}",
    err_other: "The server answered: {message}",
    "count:records": "Records",
    "count:attestations": "Attestations issued",
    "count:method:phone_otp": "Verified by phone (SMS OTP)",
    "count:method:personal_id": "Verified by personal ID",
    "count:guardian_managed": "Guardian-managed (children under 16)",
    "count:commercial_livestream": "Commercial livestream",
    "count:lockouts": "Lockouts (phone or ID)",
    "count:account_locks": "Account locks (R7)",
    "count:account_unlocks": "Account unlocks",
    "count:event:code_send_failed": "SMS delivery failures",
    "count:id_type:citizen": "Personal ID: citizens",
    "count:id_type:foreigner": "Personal ID: foreigners",
    "count:lock_kind:temporary": "Temporary locks",
    "count:lock_kind:permanent": "Permanent locks",
  },
  vi: {
    title: "Bảng điều khiển tuân thủ xacthuc",
    sign_in: "Đăng nhập",
    sign_out: "Đăng xuất",
    api_key: "Khóa API kiểm toán viên",
    api_key_hint: "Chỉ lưu trong thẻ trình duyệt này (session storage), không bao giờ nằm trong URL.",
    vkey: "Khóa xác minh nhật ký (đã ghim)",
    vkey_hint: "Lấy từ bên vận hành (`xacthuc audit log-key`), không lấy từ máy chủ này. Lưu trong trình duyệt này.",
    signed_in_as: "Nền tảng {platform}, khóa {key}",
    nav_overview: "Tổng quan",
    nav_aging: "Sắp đủ 16 tuổi",
    nav_account: "Lịch sử tài khoản",
    nav_log: "Nhật ký",
    nav_export: "Xuất dữ liệu",
    lang_switch: "English",
    from: "Từ ngày",
    to: "Đến ngày (bao gồm)",
    apply: "Xem",
    loading: "Đang tải…",
    period: "{from} – {to}",
    overview_title: "Tổng quan",
    server_counts_note:
      "Số liệu do máy chủ tính từ nhật ký. Để có số liệu được xác minh ngoại tuyến: `xacthuc audit report --checkpoint`.",
    all_counts: "Mọi số liệu của kỳ",
    key: "Chỉ số",
    count: "Số lượng",
    chart_methods: "Tài khoản được xác thực theo phương thức, theo ngày",
    chart_guardian: "Xác nhận do người giám hộ quản lý và livestream bán hàng, theo ngày",
    chart_locks: "Khóa do sai nhiều lần và khóa tài khoản (R7), theo ngày",
    chart_sms: "Gửi SMS thất bại, theo ngày",
    no_data: "Không có bản ghi nào trong kỳ này.",
    aging_title: "Tài khoản sắp đủ 16 tuổi",
    aging_note: "Trẻ em do người giám hộ quản lý có sinh nhật 16 tuổi trong kỳ: liên kết giám hộ kết thúc khi đó.",
    aging_count: "{n} tài khoản",
    more: "Thêm",
    account_title: "Lịch sử tài khoản",
    account_id: "Mã tài khoản",
    show: "Xem",
    index: "Chỉ số lá",
    time: "Thời gian (Asia/Ho_Chi_Minh)",
    event: "Sự kiện",
    outcome: "Kết quả",
    reason: "Lý do",
    proof: "Bằng chứng bao hàm",
    record: "Bản ghi như đã lưu",
    state: "Xác minh",
    no_records: "Không có bản ghi nào của tài khoản này.",
    log_title: "Nhật ký",
    log_size: "Số bản ghi trong nhật ký",
    checkpoint: "Điểm kiểm tra mới nhất",
    origin: "Nguồn gốc",
    tree_size: "Kích thước cây",
    root_hash: "Hàm băm gốc",
    signed_at: "Ký lúc",
    signature: "Ghi chú đã ký",
    pinned_key: "Khóa xác minh đã ghim",
    server_key: "Khóa do máy chủ nêu",
    keys_match: "trùng với khóa đã ghim",
    keys_differ: "khác với khóa đã ghim",
    chart_tree: "Kích thước cây tại điểm kiểm tra cuối mỗi ngày",
    problem: "Máy chủ từ chối ký: {problem}",
    export_title: "Xuất dữ liệu",
    export_note:
      "Các bản ghi của kỳ dưới dạng JSON Lines, mỗi dòng kèm chỉ số và hàm băm lá. Xác minh ngoại tuyến bản xuất toàn bộ nhật ký bằng `xacthuc audit verify` với điểm kiểm tra.",
    export_period: "Tải về dữ liệu của kỳ",
    export_all: "Tải về toàn bộ nhật ký",
    export_checkpoint: "Tải về điểm kiểm tra",
    exported: "Đã tải về các bản ghi {range}.",
    verified: "Đã xác minh",
    not_verified: "Chưa xác minh được",
    pending: "Chưa có trong điểm kiểm tra",
    verdict_ok: "Đã xác minh trong trình duyệt này: điểm kiểm tra {size} bản ghi được ký bằng khóa đã ghim; {n} bản ghi trên màn hình nằm trong đó.",
    verdict_ok_cp: "Đã xác minh trong trình duyệt này: điểm kiểm tra {size} bản ghi được ký bằng khóa đã ghim.",
    verdict_bad_records: "KHÔNG XÁC MINH ĐƯỢC: {bad} trên {n} bản ghi trên màn hình không khớp với điểm kiểm tra đã ký.",
    verdict_pending: "{n} bản ghi trên màn hình mới hơn điểm kiểm tra, chưa xác minh được.",
    verdict_bad: "KHÔNG XÁC MINH ĐƯỢC: {why}",
    why_no_key: "chưa ghim khóa xác minh",
    why_bad_key: "khóa xác minh đã ghim không hợp lệ",
    why_bad_note: "điểm kiểm tra không phải là ghi chú đã ký hợp lệ",
    why_bad_signature: "chữ ký của điểm kiểm tra bằng khóa đã ghim không hợp lệ",
    why_no_signature: "điểm kiểm tra không có chữ ký bằng khóa đã ghim",
    why_bad_checkpoint: "nội dung điểm kiểm tra sai định dạng",
    why_bad_base64: "điểm kiểm tra chứa base64 không hợp lệ",
    why_wrong_origin: "điểm kiểm tra thuộc nhật ký khác",
    why_rollback: "nhật ký ngắn hơn một điểm kiểm tra trình duyệt này đã xác minh trước đó (bị quay lui)",
    why_fork: "điểm kiểm tra không nối tiếp điểm kiểm tra trình duyệt này đã xác minh trước đó (nhật ký đã bị viết lại)",
    consistent_with: "Điểm này nối tiếp điểm kiểm tra {size} bản ghi mà trình duyệt này đã xác minh lúc {at} (đã kiểm tra bằng chứng nhất quán).",
    why_no_crypto: "trình duyệt không cung cấp WebCrypto Ed25519 ở đây (cần HTTPS hoặc localhost)",
    err_CREDENTIAL_INVALID: "Khóa API không hợp lệ.",
    err_CREDENTIAL_MISSING: "Hãy nhập khóa API.",
    err_ROLE_NOT_ALLOWED: "Khóa này không phải khóa kiểm toán viên: bảng điều khiển chỉ dành cho kiểm toán viên.",
    err_FIELD_INVALID: "Dữ liệu nhập không hợp lệ: {message}",
    err_other: "Máy chủ trả lời: {message}",
    "count:records": "Bản ghi",
    "count:attestations": "Xác nhận đã cấp",
    "count:method:phone_otp": "Xác thực bằng số điện thoại (OTP SMS)",
    "count:method:personal_id": "Xác thực bằng số định danh cá nhân",
    "count:guardian_managed": "Do người giám hộ quản lý (trẻ dưới 16 tuổi)",
    "count:commercial_livestream": "Livestream bán hàng",
    "count:lockouts": "Khóa do sai nhiều lần (điện thoại hoặc định danh)",
    "count:account_locks": "Khóa tài khoản (R7)",
    "count:account_unlocks": "Mở khóa tài khoản",
    "count:event:code_send_failed": "Gửi SMS thất bại",
    "count:id_type:citizen": "Định danh: công dân",
    "count:id_type:foreigner": "Định danh: người nước ngoài",
    "count:lock_kind:temporary": "Khóa có thời hạn",
    "count:lock_kind:permanent": "Khóa vĩnh viễn",
  },
};

const STORE = "xacthuc.lang";

function detect() {
  const saved = localStorage.getItem(STORE);
  if (saved === "vi" || saved === "en") return saved;
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const base = tag.toLowerCase().split("-")[0];
    if (base === "vi" || base === "en") return base;
  }
  return "en";
}

let lang = detect();

export function language() {
  return lang;
}

export function setLanguage(value) {
  lang = value === "vi" ? "vi" : "en";
  localStorage.setItem(STORE, lang);
  document.documentElement.lang = lang;
}

export function t(key, vars = {}) {
  const text = MESSAGES[lang][key] ?? MESSAGES.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

export function has(key) {
  return key in MESSAGES.en;
}

function locale() {
  return lang === "vi" ? "vi-VN" : "en-GB";
}

export function dateTime(iso) {
  return new Intl.DateTimeFormat(locale(), {
    timeZone: ZONE,
    dateStyle: "medium",
    timeStyle: "medium",
  }).format(new Date(iso));
}

export function day(isoDay) {
  // A calendar day already in Vietnam (YYYY-MM-DD): formatted as such, at noon local time.
  return new Intl.DateTimeFormat(locale(), { timeZone: ZONE, day: "2-digit", month: "2-digit" }).format(
    new Date(`${isoDay}T12:00:00+07:00`),
  );
}

export function number(n) {
  return new Intl.NumberFormat(locale()).format(n);
}

/** The calendar day in Vietnam of an instant, as YYYY-MM-DD. */
export function vnDay(date) {
  const parts = new Intl.DateTimeFormat("en-CA", {
    timeZone: ZONE,
    year: "numeric",
    month: "2-digit",
    day: "2-digit",
  }).formatToParts(date);
  const get = (type) => parts.find((p) => p.type === type).value;
  return `${get("year")}-${get("month")}-${get("day")}`;
}

/** Add days to a YYYY-MM-DD day. */
export function addDays(isoDay, n) {
  const d = new Date(`${isoDay}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

/** The instant a Vietnamese calendar day starts (Vietnam keeps UTC+7, no daylight saving). */
export function dayStart(isoDay) {
  return `${isoDay}T00:00:00+07:00`;
}
