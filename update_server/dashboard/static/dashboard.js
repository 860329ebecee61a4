// The dashboard's only script, served from our origin so the CSP needs no inline script:
// a form with data-confirm="question" asks before it is sent (e.g. aborting a rollout).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form && form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
