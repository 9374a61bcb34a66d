// purser console: small progressive enhancements; every page works without this script.
"use strict";
document.addEventListener("submit", function (e) {
  var msg = e.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) { e.preventDefault(); }
});
document.addEventListener("click", function (e) {
  var id = e.target.getAttribute && e.target.getAttribute("data-copy");
  if (!id) { return; }
  var field = document.getElementById(id);
  field.select();
  if (navigator.clipboard) {
    navigator.clipboard.writeText(field.value).then(function () { e.target.textContent = "Copied"; });
  }
});
