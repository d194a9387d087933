// patchaas console: refresh the live regions ([data-refresh]) without reloading the page, and ask before
// forms that say so ([data-confirm]). No framework, no CDN: this file is all the JavaScript the pages load.
(function () {
  "use strict";

  function every(el) {
    var idle = el.querySelector("[data-idle]") !== null;
    var ms = parseInt(el.getAttribute(idle ? "data-idle-every" : "data-every") || "2000", 10);
    return isNaN(ms) || ms < 500 ? 2000 : ms;
  }

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    fetch(url, {credentials: "same-origin", cache: "no-store", headers: {"X-Requested-With": "fetch"}})
      .then(function (answer) {
        if (answer.status === 401) {
          window.location.assign("/console/login?next=" + encodeURIComponent(window.location.pathname));
          return null;
        }
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          el.innerHTML = html;
          el.setAttribute("data-refreshed", String((parseInt(el.getAttribute("data-refreshed") || "0", 10)) + 1));
        }
      })
      .catch(function () { /* the next round tries again */ })
      .then(function () { window.setTimeout(function () { refresh(el); }, every(el)); });
  }

  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    window.setTimeout(function () { refresh(el); }, every(el));
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });

  // the action form: show the fields of the chosen target only
  var targets = document.querySelectorAll("input[name=target]");
  function showTarget() {
    var chosen = document.querySelector("input[name=target]:checked");
    document.querySelectorAll("[data-target]").forEach(function (block) {
      block.hidden = chosen !== null && block.getAttribute("data-target") !== chosen.value;
    });
  }
  targets.forEach(function (input) { input.addEventListener("change", showTarget); });
  if (targets.length) { showTarget(); }
})();
