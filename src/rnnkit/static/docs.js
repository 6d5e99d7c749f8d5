// The API page: Swagger UI (served by rnnkit from the swagger-ui-bundle package) on rnnkit's OpenAPI schema.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null, deepLinking: true});
});
